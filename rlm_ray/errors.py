"""Errors that mean "the user asked for something wrong": the CLI prints them
as one line and exits non-zero instead of showing a traceback."""
from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input: a missing file, a malformed table, an unknown option value."""


def exit_code(body: Callable[[], int | None], *, prog: str, interrupted: str = "interrupted") -> int:
    """Run a command body for its exit status: 0 done, 2 bad input (one line on
    stderr, no traceback), 130 interrupted. Shared by the CLI and the jobs."""
    try:
        return int(body() or 0)
    except UserError as exc:
        from rlm_ray.textsafe import terminal_safe   # messages can quote document paths

        print(terminal_safe(f"{prog}: error: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130
