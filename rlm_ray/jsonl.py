"""JSON Lines with user-clear errors: one object per line, blank lines ignored.
Shared by every reader of user-supplied .jsonl (documents, question tables)."""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from rlm_ray.errors import UserError


def iter_objects(text: str | Iterable[str], label: str) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) from a text or a stream of lines (a large table
    is never held whole); a malformed line is a UserError naming `label` and the line."""
    lines = text.splitlines() if isinstance(text, str) else text
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{label}: line {line_no} is not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{label}: line {line_no} is not a JSON object")
        yield line_no, record
