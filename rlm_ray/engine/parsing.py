"""Reading model replies: the ```repl``` code blocks to run, and a plain-text
FINAL(...) (models sometimes answer outside code, as the paper allows)."""
from __future__ import annotations

import re

# A fence opening with `repl` (optionally followed by other words on that line),
# up to the next fence on a line of its own. Non-greedy so blocks stay separate.
_REPL_BLOCK = re.compile(r"```[ \t]*repl[^\n]*\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)
_TEXT_FINAL = re.compile(r"^\s*FINAL\((.*)\)\s*$", re.DOTALL)
_TEXT_FINAL_VAR = re.compile(r"""^\s*FINAL_VAR\(\s*['"]?([A-Za-z_]\w*)['"]?\s*\)\s*$""")


def repl_blocks(reply: str) -> list[str]:
    """The code of every ```repl``` block, in order (empty blocks dropped)."""
    return [b for b in (m.group(1).rstrip() for m in _REPL_BLOCK.finditer(reply)) if b.strip()]


def text_final(reply: str) -> tuple[str, str] | None:
    """A FINAL given in plain text: ("value", text) or ("var", name), else None.

    Only a reply that *is* a FINAL(...) line counts, so prose that mentions
    FINAL while explaining a plan is not mistaken for an answer.
    """
    text = reply.strip()
    match = _TEXT_FINAL_VAR.match(text)
    if match:
        return ("var", match.group(1))
    match = _TEXT_FINAL.match(text)
    if match:
        return ("value", _unquote(match.group(1).strip()))
    return None


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value
