"""Helper functions the scripted root policy writes into the REPL.

They are real functions here (so they are typed and unit-tested) and the
policy ships their *source* to the sandbox in its first code block, the way a
careful model defines helpers before using them. They therefore may only use
the stdlib and the REPL's own names (`context`, `llm_query_batched`, ...),
never anything from rlm_ray.
"""
from __future__ import annotations

import ast
import functools
import inspect
import re
from typing import Any

# Bound by the REPL, never here: only the shipped source uses them.
context: Any
llm_query_batched: Any

# A split point for code: where a def/class/decorator starts. Splitting only
# there means a sub-model never sees a signature or a class header cut in two.
CODE_BOUNDARY = re.compile(r"^[ \t]*(?:@|async[ \t]+def[ \t]|def[ \t]|class[ \t])")


def sql_all(query: str) -> list:
    """All rows of `query`, paging with OFFSET until a short page (the REPL's
    row cap, stated in the system prompt, is above the page size), so a large
    result is never silently cut. `query` must ORDER BY."""
    rows: list = []
    while True:
        page = context.sql(f"{query} LIMIT 1000 OFFSET {len(rows)}")
        rows.extend(page)
        if len(page) < 1000:
            return rows


def candidate_paths(pattern: str, path: str | None = None) -> list:
    """`.py` paths with a chunk matching the RE2 `pattern` (a superset of the truth)."""
    where = f"regexp_matches(text, '{pattern}')"
    if path is not None:
        where += " AND path = '" + path.replace("'", "''") + "'"
    query = f"SELECT DISTINCT path FROM chunks WHERE path LIKE '%.py' AND {where} ORDER BY path"
    return [row["path"] for row in sql_all(query)]


def candidate_paths_grep(pattern: str, path: str | None = None) -> list:
    """Fallback when SQL failed: the same candidates through context.grep."""
    hits = context.grep(pattern, limit=10000, regex=True, case=True)
    return sorted({h["path"] for h in hits
                   if h["path"].endswith(".py") and (path is None or h["path"] == path)})


def code_sections(path: str, text: str, limit: int = 40000) -> list:
    """(path, piece) pairs of at most ~`limit` chars, cut only at def/class boundaries."""
    pieces, current, size = [], [], 0
    for line in text.splitlines(keepends=True):
        cut_here = size + len(line) > limit and current and CODE_BOUNDARY.match(line)
        if cut_here or size > 4 * limit:  # no boundary for very long: cut anyway
            pieces.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        pieces.append("".join(current))
    return [(path, piece) for piece in pieces]


def pack_prompts(instruction: str, sections: list, limit: int = 40000) -> list:
    """Sub-prompts of about `limit` chars: the instruction, then `=== path ===` sections."""
    prompts, body = [], ""
    for path, text in sections:
        part = f"=== {path} ===\n{text}\n"
        if body and len(body) + len(part) > limit:
            prompts.append(f"{instruction}\n\n{body}")
            body = ""
        body += part
    if body:
        prompts.append(f"{instruction}\n\n{body}")
    return prompts


def waves(prompts: list, max_chars: int = 16_000_000) -> list:
    """Consecutive groups of prompts of at most ~`max_chars` in total: one host
    call carries a whole group, and must stay well under the bridge's frame limit."""
    groups, current, size = [], [], 0
    for prompt in prompts:
        if current and size + len(prompt) > max_chars:
            groups.append(current)
            current, size = [], 0
        current.append(prompt)
        size += len(prompt)
    return groups + [current] if current else groups


def map_prompts(prompts: list, retries: int = 1) -> list:
    """llm_query_batched over all prompts (the fan-out, in as few waves as the
    bridge allows), then one more try for the slots that failed (they come
    back as "Error: ..." strings)."""
    replies = [r for group in waves(prompts) for r in llm_query_batched(group)]
    for _ in range(retries):
        failed = [i for i, r in enumerate(replies) if str(r).startswith("Error")]
        if not failed:
            break
        retried = [r for group in waves([prompts[i] for i in failed])
                   for r in llm_query_batched(group)]
        for i, reply in zip(failed, retried):
            replies[i] = reply
    return replies


def parse_listing(replies: list) -> dict:
    """`path: a, b` reply lines -> {path: [names...]} (merged over sections and replies)."""
    found: dict = {}
    for reply in replies:
        for line in str(reply).splitlines():
            path, sep, names = line.partition(": ")
            if not sep or not path.strip() or path.startswith("Error"):
                continue
            items = [n.strip() for n in names.split(",")]
            found.setdefault(path.strip(), []).extend(n for n in items if n and n != "(none)")
    return found


def pack_texts(texts: list, limit: int = 12000) -> list:
    """Join consecutive texts into pieces of at most ~`limit` chars (a longer text stays whole)."""
    pieces, current = [], ""
    for text in texts:
        if current and len(current) + len(text) + 1 > limit:
            pieces.append(current)
            current = ""
        current = f"{current}\n{text}" if current else text
    if current:
        pieces.append(current)
    return pieces


def context_pieces(str_limit: int = 8000, chunk_limit: int = 4000) -> list:
    """The whole context as pieces for a map over everything: line-aligned
    slices of a str context, or one piece per corpus chunk (chunks are already
    ~2000 tokens; only small ones are packed together, so the fan-out is the
    number of chunks)."""
    if isinstance(context, str):
        return pack_texts(context.splitlines(), str_limit)
    rows = sql_all("SELECT text FROM chunks ORDER BY doc_id, chunk_id")
    return pack_texts([row["text"] for row in rows], chunk_limit)


def parse_tree(text: str) -> Any:
    """The module's ast, or None: a file that does not parse counts for nothing."""
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError):
        return None


def defined_names(tree: Any, kind: str) -> set:
    """Names of every function ('function') or class ('class') defined anywhere in `tree`."""
    types = (ast.ClassDef,) if kind == "class" else (ast.FunctionDef, ast.AsyncFunctionDef)
    return {node.name for node in ast.walk(tree) if isinstance(node, types)} if tree else set()


def count_param_functions(tree: Any, param: str) -> int:
    """Functions, methods and async functions with a parameter (of any kind) named `param`."""
    if tree is None:
        return 0
    total = 0
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            every = args.posonlyargs + args.args + args.kwonlyargs
            every += [a for a in (args.vararg, args.kwarg) if a is not None]
            total += any(a.arg == param for a in every)
    return total


def subclasses_of(tree: Any, base: str) -> set:
    """Classes whose direct bases include `base` or `anything.base`."""
    if tree is None:
        return set()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for b in node.bases:
                if (isinstance(b, ast.Name) and b.id == base) or \
                        (isinstance(b, ast.Attribute) and b.attr == base):
                    found.add(node.name)
    return found


SHIPPED = (sql_all, candidate_paths, candidate_paths_grep, code_sections, pack_prompts,
           waves, map_prompts, parse_listing, pack_texts, context_pieces, parse_tree, defined_names,
           count_param_functions, subclasses_of)


@functools.cache
def prelude() -> str:
    """The source of the helpers above, as the first lines of a REPL block."""
    header = "import ast\nimport re\nfrom collections import Counter\nfrom typing import Any\n"
    boundary = f"CODE_BOUNDARY = re.compile({CODE_BOUNDARY.pattern!r})\n"
    return header + boundary + "\n".join(inspect.getsource(fn) for fn in SHIPPED)
