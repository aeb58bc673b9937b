"""An isolated, persistent Python REPL worker with a host-call bridge.

    from sandbox import Sandbox, SandboxError, RunResult

Usable on its own (no Ray, no rlm_ray). Exports load lazily (PEP 562) because
the worker process imports `sandbox.worker` and must not pay for the host side.
"""
from __future__ import annotations

TYPE_CHECKING = False  # the worker imports this module: `typing` would cost start-up time
if TYPE_CHECKING:
    from typing import Any

_EXPORTS = {"Sandbox": "sandbox.host", "SandboxError": "sandbox.results",
            "RunResult": "sandbox.results", "current_deadline": "sandbox.dispatch"}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
    return getattr(__import__(_EXPORTS[name], fromlist=[name]), name)
