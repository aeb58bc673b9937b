"""`define`-family questions over a codebase, with answers computed by `ast`
(independently of any model or policy): "Which module defines the function
<NAME>?" -> the one corpus path that defines it.

Only unambiguous names are used: a top-level function defined in exactly one
module, that no other `def` anywhere (method, nested, async) shares, and
whose `def NAME` text occurs in no other file. Then every reasonable reading
of "defines" (top-level or any level, by parse or by text search) agrees on
the answer, so a batch's accuracy measures the machinery, not a wording
quibble.
"""
from __future__ import annotations

import ast
import json
import os
import random
import re
from collections import defaultdict
from pathlib import Path

_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", ".git"})
# Directory names a stdlib corpus usually leaves out (see CORPUS_EXCLUDE): the
# test suites alone triple the token count without adding anything to ask about.
STDLIB_SKIP_DIRS = frozenset({"test", "tests", "idle_test"})
MAX_FILE_BYTES = 2_000_000   # the ingest default: larger files are not in the corpus


def corpus_exclude(skip_dirs: frozenset[str]) -> list[str]:
    """The ingest `exclude` patterns (gitignore syntax) matching `skip_dirs`."""
    return sorted(f"{name}/" for name in _SKIP_DIRS | skip_dirs)


def python_files(root: Path, skip_dirs: frozenset[str] = frozenset()) -> dict[str, str]:
    """relpath ("json/decoder.py", the path the corpus records) -> source text."""
    found: dict[str, str] = {}
    skip = _SKIP_DIRS | skip_dirs
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = Path(dirpath) / name
                if path.stat().st_size > MAX_FILE_BYTES:
                    continue
                try:
                    found[path.relative_to(root).as_posix()] = path.read_text("utf-8")
                except (UnicodeDecodeError, OSError):
                    continue
    return found


def _defs(source: str) -> tuple[set[str], set[str]] | None:
    """(top-level function names, every function name) or None if it does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    every = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    top = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    return top, every


def unique_functions(files: dict[str, str]) -> dict[str, str]:
    """Function name -> the only module defining it (see module docstring)."""
    top_in: dict[str, list[str]] = defaultdict(list)
    any_in: dict[str, set[str]] = defaultdict(set)
    for path, source in files.items():
        parsed = _defs(source)
        if parsed is None:
            continue
        top, every = parsed
        for name in top:
            top_in[name].append(path)
        for name in every:
            any_in[name].add(path)
    candidates = {name: paths[0] for name, paths in top_in.items()
                  if len(paths) == 1 and any_in[name] == {paths[0]} and len(name) > 3}
    # Text check: `def NAME` must appear in that file only (strings and comments included).
    pattern = re.compile(r"def\s+(\w+)")
    text_hits: dict[str, set[str]] = defaultdict(set)
    for path, source in files.items():
        for match in pattern.finditer(source):
            if match.group(1) in candidates:
                text_hits[match.group(1)].add(path)
    return {n: p for n, p in candidates.items() if text_hits[n] == {p}}


def define_questions(root: Path, count: int, seed: int = 0,
                     skip_dirs: frozenset[str] = frozenset(),
                     distinct_modules: bool = False) -> list[dict]:
    """`count` rows of query_id / question / answer, deterministic for a seed.
    `distinct_modules`: no two questions share an answer module (so no two
    questions send the same sub-call prompt: tests that count repeats use it)."""
    unique = unique_functions(python_files(root, skip_dirs))
    names = sorted(unique)
    random.Random(seed).shuffle(names)
    if distinct_modules:
        first_by_module: dict[str, str] = {}
        for name in names:
            first_by_module.setdefault(unique[name], name)
        names = [n for n in names if first_by_module[unique[n]] == n]
    if len(names) < count:
        raise ValueError(f"only {len(names)} usable functions under {root}, need {count}")
    chosen = names[:count]
    return [{"query_id": f"define-{i:04d}",
             "question": f"Which module defines the function {name}?",
             "answer": unique[name]} for i, name in enumerate(chosen)]


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
