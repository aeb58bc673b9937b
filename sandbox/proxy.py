"""Worker side of the host-call bridge: stand-ins for host functions and host
objects (see sandbox.dispatch for the host side). Every use becomes a JSON
request through the worker's transport; nothing here holds a host object.

Stdlib only and light: the worker imports this before its isolation layers go up.
"""
from __future__ import annotations

import builtins
import json

TYPE_CHECKING = False  # the worker imports this module: `typing` would cost start-up time
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

class HostError(RuntimeError):
    """A host function failed with an exception that has no builtin equivalent."""


HostError.__module__ = "builtins"  # model code sees "HostError: ...", not our package path
_BUILTIN_ERRORS = {name: obj for name, obj in vars(builtins).items()
                   if isinstance(obj, type) and issubclass(obj, Exception)}


def rebuild_error(error_type: str, message: str, args: list[Any] | None = None) -> Exception:
    """The host's exception as model code should see it: same builtin type when
    there is one, the host's message, no host traceback."""
    cls = _BUILTIN_ERRORS.get(error_type)
    if cls is not None:
        try:
            return cls(*(args if isinstance(args, list) else [message]))
        except TypeError:  # e.g. UnicodeDecodeError wants five arguments
            pass
    return HostError(f"{error_type}: {message}")


if TYPE_CHECKING:
    Transport = Callable[[str, str, "str | None", tuple, dict], Any]


class HostFunction:
    """A callable whose body runs in the host."""

    def __init__(self, transport: Transport, target: str, member: str | None = None):
        self._transport, self._target, self._member = transport, target, member

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._transport(self._target, "call", self._member, args, kwargs)

    def __repr__(self) -> str:
        name = self._target if self._member is None else f"{self._target}.{self._member}"
        return f"<host function {name}>"


class HostObject:
    """Stand-in for a host object: public methods run in the host, public
    attributes are fetched from the host on each access."""

    def __init__(self, transport: Transport, target: str, spec: dict[str, Any]):
        self._transport, self._target = transport, target
        self._methods = {m: HostFunction(transport, target, m) for m in spec["methods"]}
        self._attrs, self._has_len = set(spec["attrs"]), spec["has_len"]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._methods:
            return self._methods[name]
        if name in self._attrs:
            return self._transport(self._target, "getattr", name, (), {})
        raise AttributeError(f"{self._target!r} has no attribute {name!r}")

    def __len__(self) -> int:
        if not self._has_len:
            raise TypeError(f"object of type {self._target!r} has no len()")
        return self._transport(self._target, "len", None, (), {})

    def __dir__(self) -> list[str]:
        return sorted([*self._methods, *self._attrs])

    def __repr__(self) -> str:
        return f"<host object {self._target}: {', '.join(self.__dir__())}>"


def build_proxies(specs: dict[str, dict[str, Any]], transport: Transport) -> dict[str, Any]:
    return {name: (HostFunction(transport, name) if spec["kind"] == "function"
                   else HostObject(transport, name, spec))
            for name, spec in specs.items()}


def dumps_strict(value: Any) -> str:
    """JSON for values leaving the sandbox: no fallbacks, the caller reports why."""
    def refuse(obj: Any) -> Any:
        raise TypeError(f"type {type(obj).__name__}")
    return json.dumps(value, default=refuse, ensure_ascii=False, separators=(",", ":"))
