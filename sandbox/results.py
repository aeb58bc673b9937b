"""What the sandbox hands back to its host."""
from __future__ import annotations

from dataclasses import dataclass


class SandboxError(Exception):
    """The sandbox could not do what the host asked (start, get, set); errors
    in model code are never raised, they come back in RunResult.error."""


@dataclass(frozen=True)
class RunResult:
    stdout: str                 # captured print/stderr output, truncated with a marker
    error: str | None           # traceback text as model code should see it, or None
    timed_out: bool             # soft (state kept) or hard (worker killed) time limit hit
    elapsed_s: float
    truncated: bool             # output exceeded output_limit

    @property
    def ok(self) -> bool:
        return self.error is None
