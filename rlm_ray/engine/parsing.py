"""Reading model replies the way real models write them: the code blocks to run
(```repl```, else ```python``` as a fallback) and the FINAL(...) / FINAL_VAR(...)
a reply ends with, at the start of any line (outside code, or inside code that
did not run), as both generations of the official RLM scaffold accept.

Finishing is strict: a FINAL without its parentheses is prose a model writes
while thinking ("FINAL STEP: aggregate the counts", "FINAL: I'll verify
first."), never a finish. The one prose form is an explicit `FINAL ANSWER:
text` as the last line of a reply without code."""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass

# A fence opening with `repl` (optionally followed by other words on that line),
# up to the next fence on a line of its own, or to the end of a reply cut off
# inside its last block (max_tokens). Non-greedy so blocks stay separate.
_REPL_BLOCK = re.compile(r"```[ \t]*repl[^\n]*\n(.*?)(?:^[ \t]*```|\Z)",
                         re.DOTALL | re.MULTILINE)
_PYTHON_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n(.*?)(?:^[ \t]*```|\Z)",
                           re.DOTALL | re.MULTILINE)
_FINAL_VAR_START = re.compile(r"^[ \t]*FINAL_VAR[ \t]*\(", re.MULTILINE)
_FINAL_START = re.compile(r"^[ \t]*FINAL[ \t]*\(", re.MULTILINE)
# `FINAL ANSWER: Paris`: the rest of the reply's last line (see find_final).
_FINAL_ANSWER_LAST = re.compile(r"(?:\A|\n)[ \t]*FINAL ANSWER:[ \t]*(\S.*?)[ \t]*\Z")

REPL, PYTHON = "repl", "python"


@dataclass(frozen=True)
class CodeBlocks:
    fence: str              # "repl", "python" (no repl block, python blocks run instead) or ""
    blocks: list[str]
    rest: str               # the reply without the blocks that will run


@dataclass(frozen=True)
class Final:
    kind: str               # "var": FINAL_VAR(arg) ; "value": FINAL(arg)
    arg: str                # the source text between the parentheses, stripped


def repl_blocks(reply: str) -> list[str]:
    """The code of every ```repl``` block, in order (empty blocks dropped)."""
    return _bodies(_REPL_BLOCK, reply)


def code_blocks(reply: str) -> CodeBlocks:
    """The blocks to run: every ```repl``` block; when there is none, the
    ```python``` blocks (models trained elsewhere use that fence)."""
    for fence, pattern in ((REPL, _REPL_BLOCK), (PYTHON, _PYTHON_BLOCK)):
        blocks = _bodies(pattern, reply)
        if blocks:
            return CodeBlocks(fence, blocks, pattern.sub("\n", reply))
    return CodeBlocks("", [], reply)


def _bodies(pattern: re.Pattern, reply: str) -> list[str]:
    return [b for b in (m.group(1).rstrip() for m in pattern.finditer(reply)) if b.strip()]


def find_final(text: str, has_code: bool = False) -> Final | None:
    """The FINAL_VAR(...) or FINAL(...) starting a line of `text` (FINAL_VAR
    first, as the official scaffold does); else, when the reply has no code, a
    `FINAL ANSWER: text` last line; else None."""
    for kind, start in (("var", _FINAL_VAR_START), ("value", _FINAL_START)):
        match = start.search(text)
        if match:
            arg = _argument(text, match.end())
            if arg is not None:
                return Final(kind, arg.strip())
    explicit = None if has_code else _FINAL_ANSWER_LAST.search(text.rstrip())
    return Final("value", explicit.group(1)) if explicit else None


def _argument(text: str, start: int) -> str | None:
    """The text up to the parenthesis closing the one before `start`: quote-aware
    first, then plain depth counting (prose answers hold apostrophes), then the
    rest of the line up to its last `)`."""
    for quotes in (True, False):
        end = _closing(text, start, quotes)
        if end is not None:
            return text[start:end]
    line_end = text.find("\n", start)
    line = text[start:] if line_end < 0 else text[start:line_end]
    cut = line.rfind(")")
    return line[:cut] if cut >= 0 else (line or None)


def _closing(text: str, start: int, quotes: bool) -> int | None:
    depth, quote, i = 1, "", start
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif quotes and ch in "\"'":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def literal_text(arg: str) -> str:
    """FINAL(arg) written outside code: a Python string literal is unquoted,
    anything else is the answer as written."""
    try:
        value = ast.literal_eval(arg)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return arg
    return value if isinstance(value, str) else arg


def variable_source(arg: str) -> str:
    """The code that finishes with FINAL_VAR(arg) written outside code: a bare or
    quoted name becomes a quoted name; any other expression is evaluated as is."""
    name = arg.strip().strip("'\"").strip()
    if name.isidentifier():
        return f"FINAL_VAR({name!r})"
    return f"FINAL_VAR({arg})"


def is_name(arg: str) -> bool:
    return arg.strip().isidentifier()


def text_final(reply: str) -> tuple[str, str] | None:
    """Compatibility form of `find_final`: ("value", text) or ("var", name)."""
    final = find_final(reply, has_code=bool(code_blocks(reply).blocks))
    if final is None:
        return None
    if final.kind == "var":
        return ("var", final.arg.strip().strip("'\"").strip())
    return ("value", literal_text(final.arg))
