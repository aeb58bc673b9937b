"""The sub-model side of `sim/rlm-policy`: a single user message (no system
message) answered from the text it carries, by a fixed rule per prompt kind.

The prompt's first line names the kind; the rest is the text to read. Code
prompts may hold several `=== <path> ===` sections: the reply then has one
line `<path>: names` per section (`(none)` when empty); without sections it is
one line of names.

| first line starts with | rule |
|---|---|
| `Extract the secret code for <KEY>` | `<VALUE>` from `secret code for <KEY> is <VALUE>`; else from `<KEY> is/=/: <VALUE>`; else `NOT FOUND` |
| `Count the records labelled '<L>'` | number of `record <ID> \\| user <U> \\| label: <L> \\|` records |
| `Count the records per label` | `label: n` lines, sorted by label |
| `List the users with records labelled '<L>'` | distinct users, sorted, comma-separated, or `NONE` |
| `List the class names defined in this code` | names after `class` at a line start |
| `List the function names defined in this code` | names after `def` / `async def` at a line start |
| `List functions with a parameter named <P> in this code` | one name per def whose signature (string-aware paren scan) has a parameter `<P>` |
| `List the classes that inherit from <B> in this code` | classes with a base `<B>` or `x.<B>` in their header |
| anything else | `UNKNOWN` (e.g. a child question reaching a plain sub-model at max depth) |

Rules read like a hasty reader: a `def` inside a docstring counts. The root
code verifies with `ast` where that matters.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

UNKNOWN = "UNKNOWN"
NOT_FOUND = "NOT FOUND"

_SECTION = re.compile(r"^=== (.+?) ===$", re.MULTILINE)
_RECORD = re.compile(r"record\s+(\S+)\s*\|\s*user\s+(\S+)\s*\|\s*label:\s*([^|\n]+?)\s*\|")
_DEF = re.compile(r"^[ \t]*(?:async[ \t]+)?def[ \t]+(\w+)[ \t]*\(", re.MULTILINE)
_CLASS = re.compile(r"^[ \t]*class[ \t]+(\w+)", re.MULTILINE)
_CLASS_WITH_BASES = re.compile(r"^[ \t]*class[ \t]+(\w+)[ \t]*\(", re.MULTILINE)

Rule = Callable[[re.Match, str], str]
_RULES: list[tuple[re.Pattern, Rule]] = []


def sub_rule(pattern: str) -> Callable[[Rule], Rule]:
    """Register a rule for prompts whose first line matches `pattern` (from its start)."""
    def decorate(fn: Rule) -> Rule:
        _RULES.append((re.compile(pattern), fn))
        return fn
    return decorate


def answer_sub(prompt: str) -> str:
    first, _, body = prompt.partition("\n")
    for pattern, rule in _RULES:
        match = pattern.match(first.strip())
        if match:
            return rule(match, body)
    return UNKNOWN


# -- text rules --------------------------------------------------------------
@sub_rule(r"Extract the secret code for (.+?) from")
def _secret(match: re.Match, text: str) -> str:
    key = re.escape(match.group(1))
    for pattern in (rf"secret code for {key} is (\S+)", rf"(?<!\w){key}(?!\w)\W+(?:is|=|:)\s*(\S+)"):
        found = re.search(pattern, text, re.IGNORECASE)
        if found:
            return found.group(1).rstrip(".,;")
    return NOT_FOUND


def records(text: str) -> list[tuple[str, str, str]]:
    """(record id, user, label) of every record in `text`."""
    return [(m.group(1), m.group(2), m.group(3)) for m in _RECORD.finditer(text)]


@sub_rule(r"Count the records labelled '(.+?)'")
def _count_label(match: re.Match, text: str) -> str:
    return str(sum(label == match.group(1) for _, _, label in records(text)))


@sub_rule(r"Count the records per label")
def _per_label(match: re.Match, text: str) -> str:
    counts = Counter(label for _, _, label in records(text))
    return "\n".join(f"{label}: {n}" for label, n in sorted(counts.items())) or "none: 0"


@sub_rule(r"List the users with records labelled '(.+?)'")
def _users(match: re.Match, text: str) -> str:
    users = sorted({user for _, user, label in records(text) if label == match.group(1)})
    return ", ".join(users) or "NONE"


# -- code rules (per section) ------------------------------------------------
def sections(text: str) -> list[tuple[str | None, str]]:
    heads = list(_SECTION.finditer(text))
    if not heads:
        return [(None, text)]
    ends = [h.start() for h in heads[1:]] + [len(text)]
    return [(h.group(1), text[h.end():end]) for h, end in zip(heads, ends)]


def _per_section(names_of: Callable[[str], list[str]], text: str) -> str:
    lines = []
    for path, body in sections(text):
        names = ", ".join(names_of(body)) or "(none)"
        lines.append(names if path is None else f"{path}: {names}")
    return "\n".join(lines)


def _paren_body(text: str, open_at: int) -> str:
    """The text inside the parenthesis opening at `open_at`, skipping strings and comments."""
    depth, i, out = 0, open_at, []
    while i < len(text):
        ch = text[i]
        if ch in "\"'":
            quote = text[i:i + 3] if text[i:i + 3] in ('"""', "'''") else ch
            end = text.find(quote, i + len(quote))
            while end > 0 and len(quote) == 1 and text[end - 1] == "\\":
                end = text.find(quote, end + 1)
            stop = len(text) if end < 0 else end + len(quote)
            out.append("''")  # a string never names a parameter
            i = stop
            continue
        if ch == "#":
            newline = text.find("\n", i)
            i = len(text) if newline < 0 else newline
            continue
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth == 0:
            break
        out.append(ch)
        i += 1
    return "".join(out)[1:]


def _top_level_parts(body: str) -> list[str]:
    parts, depth, current = [], 0, []
    for ch in body:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def param_names(body: str) -> list[str]:
    """Parameter names of a signature body (`self, a: int = 1, *args, key, **kw`)."""
    names = []
    for part in _top_level_parts(body):
        found = re.match(r"\**\s*([A-Za-z_]\w*)", part)
        if found:
            names.append(found.group(1))
    return names


def base_names(body: str) -> list[str]:
    """Last components of dotted bases (`abc.ABC` -> `ABC`); keywords (`metaclass=`) skipped."""
    names = []
    for part in _top_level_parts(body):
        if re.fullmatch(r"[A-Za-z_][\w.]*", part):
            names.append(part.rsplit(".", 1)[-1])
    return names


@sub_rule(r"List the class names defined in this code")
def _classes(match: re.Match, text: str) -> str:
    return _per_section(lambda body: list(dict.fromkeys(_CLASS.findall(body))), text)


@sub_rule(r"List the function names defined in this code")
def _functions(match: re.Match, text: str) -> str:
    return _per_section(lambda body: list(dict.fromkeys(_DEF.findall(body))), text)


@sub_rule(r"List functions with a parameter named (\w+) in this code")
def _with_param(match: re.Match, text: str) -> str:
    param = match.group(1)

    def names_of(body: str) -> list[str]:
        return [d.group(1) for d in _DEF.finditer(body)
                if param in param_names(_paren_body(body, d.end() - 1))]
    return _per_section(names_of, text)


@sub_rule(r"List the classes that inherit from (\w+) in this code")
def _inheriting(match: re.Match, text: str) -> str:
    base = match.group(1)

    def names_of(body: str) -> list[str]:
        found = [c.group(1) for c in _CLASS_WITH_BASES.finditer(body)
                 if base in base_names(_paren_body(body, c.end() - 1))]
        return list(dict.fromkeys(found))
    return _per_section(names_of, text)
