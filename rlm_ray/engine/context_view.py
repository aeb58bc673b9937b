"""The REPL's view of a corpus: `ContextView`, a proxy over the Corpus whose
methods run in the host and return JSON-friendly values with caps.

Caps keep one careless `context.sql("select * from chunks")` from dragging a
100M-token corpus through the actor: the parsed query is wrapped in a LIMIT so
DuckDB never materialises more than the cap, and the model is told when it was
cut. Every call runs under the block's deadline (`set_deadline`): the corpus
interrupts DuckDB when the block's time is up.
"""
from __future__ import annotations

import datetime
import decimal
import threading
import time
from typing import Any

MAX_GREP_LIMIT = 10_000
# Without a block deadline (direct use of the view), a host call still ends.
DEFAULT_CALL_TIMEOUT_S = 300.0


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if isinstance(value, (datetime.date, datetime.datetime, datetime.time, decimal.Decimal)):
        return str(value)
    return str(value)


HOST_ONLY_STATS = frozenset({"source"})


class ContextView:
    """What `context` is in the REPL when the input is a corpus."""

    # The sandbox exposes exactly these (not drain_notes, not the Corpus itself).
    __sandbox_expose__ = ("sql", "grep", "read", "docs", "stats")

    def __init__(self, corpus, *, max_rows: int = 5000, max_read_chars: int = 2_000_000) -> None:
        self._corpus = corpus
        self._max_rows = max_rows
        self._max_read_chars = max_read_chars
        self._notes: list[str] = []
        self._lock = threading.Lock()
        self._deadline: float | None = None

    def set_deadline(self, deadline: float | None) -> None:
        """The running block's end (time.monotonic()); None: the default per call."""
        self._deadline = deadline

    def _timeout_s(self) -> float:
        if self._deadline is None:
            return DEFAULT_CALL_TIMEOUT_S
        return self._deadline - time.monotonic()

    # -- notes for the model (drained by the loop into the REPL output) -----
    def _note(self, text: str) -> None:
        with self._lock:
            self._notes.append(text)

    def drain_notes(self) -> list[str]:
        with self._lock:
            notes, self._notes = self._notes, []
        return notes

    # -- the API ------------------------------------------------------------
    @property
    def stats(self) -> dict:
        # `source` names host paths / bucket URIs the corpus was built from:
        # provenance for operators, not something model code needs to see.
        return _json_safe({k: v for k, v in self._corpus.stats.items() if k not in HOST_ONLY_STATS})

    def __len__(self) -> int:
        return int(len(self._corpus))

    def sql(self, query: str) -> list[dict]:
        query = str(query).strip().rstrip(";").strip()
        if not query:
            raise ValueError("context.sql: empty query")
        cap = self._max_rows
        table = self._corpus.sql(query, limit=cap + 1, timeout_s=self._timeout_s())
        rows = table.slice(0, cap).to_pylist()
        if table.num_rows > cap:
            self._note(f"context.sql returned only the first {cap} rows; aggregate in SQL "
                       "or page with LIMIT/OFFSET")
        return _json_safe(rows)

    def grep(self, pattern: str, limit: int | None = 100, regex: bool = True,
             case: bool = False) -> list[dict]:
        limit = MAX_GREP_LIMIT if limit is None else max(1, min(int(limit), MAX_GREP_LIMIT))
        hits = self._corpus.grep(str(pattern), limit=limit, regex=bool(regex), case=bool(case),
                                 timeout_s=self._timeout_s())
        if len(hits) >= limit:
            self._note(f"context.grep stopped at limit={limit} hits")
        return _json_safe(list(hits))

    def read(self, doc: str, start: int = 0, end: int | None = None) -> str:
        text = self._corpus.read(doc, start=int(start), end=None if end is None else int(end),
                                 timeout_s=self._timeout_s())
        if len(text) > self._max_read_chars:
            self._note(f"context.read returned the first {self._max_read_chars} characters of "
                       f"{len(text)}; read fewer lines at a time")
            text = text[: self._max_read_chars]
        return text

    def docs(self, limit: int | None = None) -> list[dict]:
        wanted = None if limit is None else max(0, int(limit))
        cap = self._max_rows if wanted is None else min(wanted, self._max_rows)
        rows = self._corpus.docs(limit=cap + 1)
        if len(rows) > cap and (wanted is None or wanted > cap):
            self._note(f"context.docs returned only the first {cap} documents; "
                       "use context.sql on the docs view to filter")
        return _json_safe(list(rows[:cap]))
