"""Text from models or documents, made safe to print on an operator's terminal.

An answer, a step's output or a document path can carry escape sequences:
OSC 52 writes the clipboard, OSC 0/2 retitle the window, CSI moves the cursor
or erases what was printed, a bare CR overwrites a line, and C1 controls are
8-bit forms of the same. `terminal_safe` makes every such character visible
and inert (ESC becomes the four characters `\\x1b`), so the sequence is shown,
not obeyed. Newlines and tabs stay. Bidi override/isolate characters are
escaped too: they reorder what the operator reads.

Only terminal output goes through here; files, trajectories and Parquet
tables keep the exact text.
"""
from __future__ import annotations

import re

# C0 controls but \t and \n; DEL; C1 controls (incl. 8-bit CSI/OSC); bidi
# embeddings/overrides/isolates; a CR that does not end a line (CRLF is harmless).
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]|\r(?!\n)")


def _visible(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def terminal_safe(text: object) -> str:
    """`text` (str() of it) with control and escape characters shown as escapes."""
    return _UNSAFE.sub(_visible, text if isinstance(text, str) else str(text))
