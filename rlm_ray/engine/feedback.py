"""The REPL feedback of one root turn: each block's output gets its own view
(so a long first print cannot hide later blocks), all views together stay
under a per-turn cap, and every truncation note gives the true hidden size
(including what the sandbox itself cut). Then notes, and the REPL variables,
as the official scaffold lists them after each turn.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from rlm_ray.engine import prompts

# sandbox.host.TRUNCATION_MARKER, as it appears in a block's stdout.
_SANDBOX_CUT = re.compile(r"\n?\[output truncated: (\d+) more characters not shown "
                          r"\(limit \d+\)\]\n?")
ERROR_VIEW_CHARS = 5000
NO_OUTPUT = "(no output)"


@dataclass
class BlockOutput:
    output: str
    error: str | None = None


@dataclass
class TurnFeedback:
    iteration: int
    blocks: list[BlockOutput] = field(default_factory=list)
    skipped: int = 0                 # blocks not run after an error
    notes: list[str] = field(default_factory=list)
    variables: list[str] = field(default_factory=list)
    more_variables: int = 0


def view(text: str, limit: int, hidden_before: int = 0) -> str:
    """`text` cut to `limit` characters, with a note of how much is hidden in total."""
    total = len(text) + hidden_before
    if total <= limit and not hidden_before:
        return text
    shown = text[:limit]
    hidden = total - len(shown)
    return (shown.rstrip("\n") + f"\n[output truncated: {hidden} of {total} characters "
            "not shown; print less, or slices]")


def _strip_sandbox_cut(output: str) -> tuple[str, int]:
    cut = sum(int(m.group(1)) for m in _SANDBOX_CUT.finditer(output))
    if not cut:
        return output, 0
    # Keep a line break only where notes follow the marker; it is not printed text.
    return _SANDBOX_CUT.sub(lambda m: "\n" if m.end() < len(output) else "", output), cut


def allocate(lengths: list[int], per_block: int, total: int) -> list[int]:
    """Characters shown per block: at most `per_block` each and `total` in all;
    short outputs are shown whole, the room they leave goes to the long ones."""
    wanted = [min(n, per_block) for n in lengths]
    shares = [0] * len(lengths)
    room = total
    order = sorted(range(len(lengths)), key=lambda i: wanted[i])
    for rank, i in enumerate(order):
        fair = room // (len(order) - rank)
        shares[i] = min(wanted[i], fair)
        room -= shares[i]
    return shares


def render(turn: TurnFeedback, per_block: int, total: int) -> str:
    bodies = [_strip_sandbox_cut(b.output or "") for b in turn.blocks]
    shares = allocate([len(text) for text, _ in bodies], per_block, total)
    parts: list[str] = []
    many = len(turn.blocks) > 1
    for index, (block, (text, cut), share) in enumerate(zip(turn.blocks, bodies, shares)):
        if many:
            parts.append(f"[block {index + 1} of {len(turn.blocks) + turn.skipped}]")
        shown = view(text, share, cut) if (text or cut) else NO_OUTPUT
        parts.append(shown.rstrip("\n") or NO_OUTPUT)
        if block.error:
            parts.append("Error:\n" + view(block.error, ERROR_VIEW_CHARS))
    if turn.skipped:
        parts.append(f"({turn.skipped} later block(s) of this reply not run because of the error)")
    parts.extend(f"[note] {note}" for note in turn.notes)
    if turn.variables:
        more = f" (+{turn.more_variables} more)" if turn.more_variables else ""
        parts.append("REPL variables: " + ", ".join(turn.variables) + more)
    return prompts.repl_feedback(turn.iteration, "\n".join(parts), None)
