"""S-NIAH: one secret code hidden in a haystack of real stdlib source.

The haystack is whole stdlib files in a seeded order (cycled with a `copyN/`
path prefix once the ~7.7M-token stdlib runs out, so 2^23 tokens is reachable),
the last file cut at a line to hit the size. Each depth in DEPTHS gets its own
needle line `The secret code for <KEY> is <VALUE>.` with a distinct key, placed
at that fraction of the haystack's tokens; each question asks for one key, so
every question has exactly one needle to find.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from rlm_ray.bench.stdlib_text import SourceFile, stdlib_files
from rlm_ray.bench.suites.base import Case, Question
from rlm_ray.tokens import count_lines, count_tokens

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
SIZES = tuple(2 ** k for k in range(13, 24))     # 8K ... 8M tokens
_KEY_WORDS = ("ORCHID", "QUASAR", "TUNDRA", "MARLIN", "COBALT", "FALCON", "JUNIPER",
              "NEBULA", "SAFFRON", "TOPAZ", "VIOLET", "ZEPHYR", "HARBOR", "GLACIER")


def needle_line(key: str, value: str) -> str:
    return f"The secret code for {key} is {value}."


def question_for(key: str) -> str:
    return f"What is the secret code for {key}?"


@dataclass
class _Doc:
    path: str
    lines: list[str]
    tokens: int
    start: int = 0          # token offset of the document in the haystack


def _cut(source: SourceFile, budget: int) -> tuple[list[str], int]:
    """The longest prefix of whole lines that fits in `budget` tokens."""
    lines = source.text.splitlines()
    kept, used = [], 0
    for line, n in zip(lines, count_lines(lines)):
        if used + n + 1 > budget:  # +1: the newline that joins lines
            break
        kept.append(line)
        used += n + 1
    return kept, used


def _haystack(rng: random.Random, size: int) -> list[_Doc]:
    files = [f for f in stdlib_files() if f.tokens > 0]
    docs: list[_Doc] = []
    total, copy_no = 0, 0
    while total < size:
        order = files[:]
        rng.shuffle(order)
        for source in order:
            path = source.relpath if copy_no == 0 else f"copy{copy_no}/{source.relpath}"
            if total + source.tokens <= size:
                docs.append(_Doc(path, source.text.splitlines(), source.tokens, total))
                total += source.tokens
                continue
            lines, used = _cut(source, size - total)
            if lines:
                docs.append(_Doc(path, lines, used, total))
                total += used
            break
        else:
            copy_no += 1
            continue
        break
    return docs


def _place(docs: list[_Doc], depth: float, line: str) -> None:
    """Insert `line` at `depth` (0..1) of the haystack's tokens, at a line boundary."""
    total = docs[-1].start + docs[-1].tokens
    target = depth * total
    doc = next((d for d in docs if d.start <= target < d.start + d.tokens), docs[-1])
    frac = min(max((target - doc.start) / max(doc.tokens, 1), 0.0), 1.0)
    doc.lines.insert(round(frac * len(doc.lines)), line)


def generate(seed: int, size: int) -> Case:
    rng = random.Random(f"sniah:{seed}:{size}")
    docs = _haystack(rng, size)
    keys = rng.sample([f"{w}-{n}" for w in _KEY_WORDS for n in range(1000, 10000, 7)], len(DEPTHS))
    questions, needle_tokens = [], 0
    for depth, key in zip(DEPTHS, keys):
        value = str(rng.randrange(10 ** 7, 10 ** 8))
        line = needle_line(key, value)
        _place(docs, depth, line)
        needle_tokens += count_tokens(line) + 1
        questions.append(Question(f"sniah-{size}-d{round(depth * 100):03d}",
                                  question_for(key), value, "needle"))
    documents = [{"path": d.path, "text": "\n".join(d.lines) + "\n"} for d in docs]
    tokens = sum(d.tokens for d in docs) + needle_tokens
    return Case("sniah", size, seed, documents, questions, tokens,
                notes={"depths": list(DEPTHS), "documents": len(documents)})
