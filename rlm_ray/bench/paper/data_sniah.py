"""S-NIAH: RULER-style single needle in a haystack, generated (no publisher file).

As in RULER's single-needle task: a haystack of repeated filler sentences, one
needle `One of the special magic numbers for <key> is: <number>.` at a seeded
depth, and the question asks for that key's number. The paper runs 50 such
tasks per length (2^13 to 2^18 tokens); `--context-len` picks the length and
`--limit` the count.
"""
from __future__ import annotations

import random
from pathlib import Path

from rlm_ray.bench.paper import scoring
from rlm_ray.bench.paper.registry import LoadOptions, dataset
from rlm_ray.bench.paper.tasks import Task
from rlm_ray.errors import UserError

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
_WORDS = ("amber", "basalt", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "indigo",
          "jasper", "kelp", "lumen", "maple", "nickel", "onyx", "prairie", "quartz", "raven")
DEFAULT_TASKS = 50


def make_task(index: int, context_len: int, rng: random.Random) -> Task:
    from rlm_ray.tokens import count_tokens

    key = f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}-{rng.randrange(100, 1000)}"
    value = str(rng.randrange(1_000_000, 10_000_000))
    needle = f"One of the special magic numbers for {key} is: {value}."
    repeats = max(2, context_len // max(1, count_tokens(FILLER + " ")))
    sentences = [FILLER] * repeats
    sentences.insert(rng.randrange(len(sentences) + 1), needle)
    return Task(query_id=f"sniah-{context_len}-{index}",
                question=f"What is the special magic number for {key} mentioned in the provided "
                         "text? Answer with the number only.",
                expected=value, context_text=" ".join(sentences),
                meta={"depth_key": key})


def _score(task: Task, answer: str | None) -> scoring.Scored:
    return scoring.score_contains(answer, task.expected, "string match (RULER)")


@dataset("sniah", title="S-NIAH (RULER-style, generated)", source="generated", score=_score,
         needs_data=False, default_context_len=8192)
def load_sniah(files: list[Path], opts: LoadOptions) -> list[Task]:
    if files:
        raise UserError("S-NIAH is generated from --seed; drop --data")
    context_len = opts.context_len or 8192
    if context_len < 256:
        raise UserError("--context-len must be at least 256 tokens for S-NIAH")
    rng = random.Random(f"sniah:{opts.seed}:{context_len}")
    return [make_task(i, context_len, rng) for i in range(opts.limit or DEFAULT_TASKS)]
