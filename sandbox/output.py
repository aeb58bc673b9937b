"""What model code's run produces as text: its bounded stdout/stderr (with a
write-through mirror the host can read after a kill) and its tracebacks as
model code should see them. Worker side; stdlib only, light imports.
"""
from __future__ import annotations

import io
import os
import threading

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Outermost and innermost frames only: formatting a 10^6-deep recursion in
# full takes longer than any time limit, and the ends are what the model needs.
TRACEBACK_FRAMES_KEPT = 30
MAX_ERROR_CHARS = 100_000
MIRROR_HEADER_BYTES = 8   # see sandbox.process.output_mirror


class BoundedOutput(io.TextIOBase):
    """stdout+stderr of model code: keeps the first `limit` characters and
    counts the rest, so a print loop cannot fill the worker's memory. What is
    kept is also written through to `mirror_fd` (a host-owned file), so the
    output printed before a hard kill or a crash is not lost with the worker."""

    def __init__(self, mirror_fd: int) -> None:
        self._lock = threading.Lock()
        self._mirror_fd, self._mirror_at = mirror_fd, 0
        self._parts: list[str] = []
        self._size, self._cut, self._limit = 0, 0, 0

    def reset(self, limit: int) -> None:
        with self._lock:
            self._parts = []
            self._size, self._cut, self._limit = 0, 0, limit
            self._mirror_at = 0
            self._mirror_length()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            kept = text[: max(self._limit - self._size, 0)]
            if kept:
                self._parts.append(kept)
                self._size += len(kept)
                self._mirror(kept)
            self._cut += len(text) - len(kept)
        return len(text)

    def _mirror(self, text: str) -> None:
        data = text.encode("utf-8", "backslashreplace")
        try:
            os.pwrite(self._mirror_fd, data, MIRROR_HEADER_BYTES + self._mirror_at)
            self._mirror_at += len(data)
            self._mirror_length()
        except OSError:
            pass  # the mirror is a convenience; the reply frame carries the output

    def _mirror_length(self) -> None:
        try:
            os.pwrite(self._mirror_fd, self._mirror_at.to_bytes(MIRROR_HEADER_BYTES, "little"), 0)
        except OSError:
            pass

    def take(self) -> tuple[str, int]:
        with self._lock:
            text, cut = "".join(self._parts), self._cut
            self._parts, self._size, self._cut = [], 0, 0
        return text, cut


def _shorten_tracebacks(exc: BaseException) -> int:
    """Splice out the middle of very long tracebacks (of exc and its chain)."""
    omitted, seen, pending = 0, set(), [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        entries, tb = [], current.__traceback__
        while tb is not None:
            entries.append(tb)
            tb = tb.tb_next
        if len(entries) > 2 * TRACEBACK_FRAMES_KEPT:
            entries[TRACEBACK_FRAMES_KEPT - 1].tb_next = entries[-TRACEBACK_FRAMES_KEPT]
            omitted += len(entries) - 2 * TRACEBACK_FRAMES_KEPT
        pending += [current.__cause__, current.__context__]
    return omitted


def format_error(exc: BaseException, sources: dict[str, str]) -> str:
    """The traceback as model code should see it: its own `<repl-N>` frames and
    library frames, none of the worker's. `sources` holds each run's code so
    the traceback can quote it."""
    # Imported on first error, not at start-up (they pull in tokenize and re);
    # the standard library stays readable after confinement.
    import linecache
    import traceback
    for filename, code in sources.items():
        linecache.cache.setdefault(filename, (len(code), None, code.splitlines(True), filename))
    omitted = _shorten_tracebacks(exc)
    report = traceback.TracebackException(type(exc), exc, exc.__traceback__, compact=True)
    pending, seen = [report], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.stack = traceback.StackSummary.from_list(
            [frame for frame in current.stack if not frame.filename.startswith(PACKAGE_DIR)])
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    text = "".join(report.format())
    if len(text) > MAX_ERROR_CHARS:  # a huge exception message must not flood the frame
        half = MAX_ERROR_CHARS // 2
        text = (f"{text[:half]}\n[error text shortened: {len(text) - 2 * half} characters "
                f"omitted]\n{text[-half:]}")
    if omitted:
        text += f"[traceback shortened: {omitted} intermediate frames omitted]\n"
    if isinstance(exc, SystemExit):
        text += "(sys.exit() does not end the REPL; its state is kept)\n"
    return text
