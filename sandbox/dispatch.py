"""Host side of the host-call bridge: what the sandbox may touch, and running
its requests against the real objects.

The host describes each entry of `host_functions` once (`describe`); the
worker builds stand-ins from those descriptions (sandbox.proxy); every call
arrives as a JSON request that is checked against the description before the
real object is touched. So model code reaches exactly the public surface it
was given, never `_private` attributes, never the object itself (which may
hold credentials).
"""
from __future__ import annotations

import datetime
import decimal
import functools
import inspect
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, is_dataclass
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

_calling = threading.local()


@dataclass
class HostSpec:
    """What the sandbox may touch on one host entry."""
    kind: str                                   # "function" | "object"
    methods: list[str] = field(default_factory=list)
    attrs: list[str] = field(default_factory=list)
    has_len: bool = False


def describe(target: Any) -> HostSpec:
    if (inspect.isroutine(target) or isinstance(target, functools.partial)
            or (callable(target) and not _public_names(target))):
        return HostSpec(kind="function")
    spec = HostSpec(kind="object", has_len=hasattr(type(target), "__len__"))
    # An object may narrow what it shows with `__sandbox_expose__ = ("sql", ...)`.
    names = getattr(target, "__sandbox_expose__", None) or _public_names(target)
    for name in names:
        static = inspect.getattr_static(target, name, None)
        is_method = isinstance(static, (staticmethod, classmethod)) or (
            callable(static) and not isinstance(static, property))
        (spec.methods if is_method else spec.attrs).append(name)
    return spec


def _public_names(target: Any) -> list[str]:
    return [name for name in dir(target) if not name.startswith("_")]


def current_deadline() -> float | None:
    """Inside a host function called from the sandbox: the `time.monotonic()`
    by which the calling run must end (None outside a host call). Host time
    counts against the run's limit, so long host work should stop by then."""
    return getattr(_calling, "deadline", None)


@contextmanager
def deadline_scope(deadline: float) -> Iterator[None]:
    previous = getattr(_calling, "deadline", None)
    _calling.deadline = deadline
    try:
        yield
    finally:
        _calling.deadline = previous


class HostCallRefused(Exception):
    """The sandbox asked for something outside the described surface."""


class HostDispatcher:
    """Runs validated requests from the worker against the real host objects."""

    def __init__(self, host_functions: dict[str, Any]):
        self.targets = dict(host_functions)
        self.specs = {name: describe(target) for name, target in self.targets.items()}
        self._kinds: dict[str, Callable[[str, HostSpec, str | None], Callable[..., Any]]] = {
            "call": self._callable, "getattr": self._attribute, "len": self._length,
        }

    def spec_payload(self) -> dict[str, dict[str, Any]]:
        return {name: asdict(spec) for name, spec in self.specs.items()}

    def resolve(self, request: dict[str, Any]) -> Callable[..., Any]:
        target, kind, member = request.get("target"), request.get("kind"), request.get("member")
        spec = self.specs.get(target) if isinstance(target, str) else None
        resolver = self._kinds.get(kind) if isinstance(kind, str) else None
        if spec is None or resolver is None:
            raise HostCallRefused(f"no host function {target!r} ({kind!r})")
        return resolver(target, spec, member)

    def _callable(self, target: str, spec: HostSpec, member: str | None) -> Callable[..., Any]:
        if spec.kind == "function" and member is None:
            return self.targets[target]
        if member in spec.methods:
            return getattr(self.targets[target], member)
        raise HostCallRefused(f"{target} has no method {member!r}")

    def _attribute(self, target: str, spec: HostSpec, member: str | None) -> Callable[..., Any]:
        if member not in spec.attrs:
            raise HostCallRefused(f"{target} has no attribute {member!r}")
        return lambda: getattr(self.targets[target], member)

    def _length(self, target: str, spec: HostSpec, member: str | None) -> Callable[..., Any]:
        if not spec.has_len:
            raise HostCallRefused(f"object of type {target!r} has no len()")
        return lambda: len(self.targets[target])


def plain_json(value: Any) -> Any:
    """The JSON `default` hook for host values: tables become rows, sets become
    lists, dates strings. TypeError for anything else (never pickle)."""
    if hasattr(value, "to_pylist"):            # pyarrow Table/Array, without importing pyarrow
        return value.to_pylist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if hasattr(value, "item") and callable(value.item):   # numpy scalars
        return value.item()
    raise TypeError(f"type {type(value).__name__}")


def to_jsonable(value: Any) -> Any:
    """Like plain_json, but a host function's odd result still reaches the
    model: as its repr, with a note saying so."""
    try:
        return plain_json(value)
    except TypeError:
        return f"<{type(value).__name__} value not JSON-serialisable: {repr(value)[:200]}>"
