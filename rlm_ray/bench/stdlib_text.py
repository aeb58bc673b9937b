"""The CPython standard library as benchmark raw material: real source and
docstrings, the same on every machine running this Python, with token counts
cached so that sizing an 8M-token haystack does not re-tokenise 30 MB each run.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from rlm_ray.tokens import count_tokens_batch

# Third-party code is not the stdlib, and differs between machines.
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
BENCH_HOME = Path(os.environ.get("RLM_RAY_BENCH_HOME", ".bench"))


@dataclass(frozen=True)
class SourceFile:
    relpath: str   # e.g. "json/decoder.py": also the path the corpus records
    text: str
    tokens: int


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _python_files(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        found.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return found


def _cache_path(kind: str) -> Path:
    # Keyed by the file list and sizes: another Python or an upgraded stdlib gets its own cache.
    root = stdlib_root()
    digest = hashlib.sha256()
    for path in _python_files(root):
        digest.update(f"{path.relative_to(root)}:{path.stat().st_size}\n".encode())
    return BENCH_HOME / "cache" / f"stdlib-{kind}-{digest.hexdigest()[:16]}.json"


def _load_cache(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _store_cache(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)


@functools.cache
def stdlib_files() -> tuple[SourceFile, ...]:
    """Every stdlib `.py` file (sorted by path) as UTF-8 text with its token count."""
    root = stdlib_root()
    paths = _python_files(root)
    texts = [p.read_bytes().decode("utf-8", "replace") for p in paths]
    relpaths = [p.relative_to(root).as_posix() for p in paths]
    cache = _cache_path("tokens")
    counts = _load_cache(cache)
    if counts is None or len(counts) != len(paths):
        counts = count_tokens_batch(texts)
        _store_cache(cache, counts)
    return tuple(SourceFile(r, t, n) for r, t, n in zip(relpaths, texts, counts))


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_PLAIN = re.compile(r"^[A-Za-z][A-Za-z0-9 ,;:'()\-]+[.!?]$")


@functools.cache
def docstring_sentences(max_sentences: int = 20_000) -> tuple[str, ...]:
    """Plain-English sentences from module docstrings: filler text for the
    labelled records of `oolong`. Only letters, digits and light punctuation
    survive so the record format (`|` separators, `label:`) is never faked."""
    import ast

    cache = _cache_path(f"sentences{max_sentences}")
    cached = _load_cache(cache)
    if cached is not None:
        return tuple(cached)
    sentences: list[str] = []
    for source in stdlib_files():
        try:
            doc = ast.get_docstring(ast.parse(source.text)) or ""
        except (SyntaxError, ValueError):
            continue
        for sentence in _SENTENCE_END.split(" ".join(doc.split())):
            words = sentence.split()
            if 5 <= len(words) <= 25 and _PLAIN.match(sentence) and "label" not in sentence.lower():
                sentences.append(sentence)
        if len(sentences) >= max_sentences:
            break
    _store_cache(cache, sentences)
    return tuple(sentences)
