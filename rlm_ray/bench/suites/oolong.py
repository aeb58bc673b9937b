"""OOLONG-style aggregation: questions that need every record of the corpus.

Records are `record <ID> | user <U> | label: <LABEL> | <text>` lines with
seeded users and labels (skewed frequencies so exactly one label is the most
frequent; the rarer labels drawn from small user pools so OOLONG-Pairs style
answers stay readable) and real docstring sentences as text. The answers are
counted from the generated records themselves.
"""
from __future__ import annotations

import itertools
import random
from collections import Counter, defaultdict
from dataclasses import dataclass

from rlm_ray.bench.stdlib_text import docstring_sentences
from rlm_ray.bench.suites.base import Case, Question
from rlm_ray.tokens import count_tokens

LABELS = ("abbreviation", "entity", "description", "human", "location", "numeric")
_WEIGHTS = (0.30, 0.22, 0.17, 0.13, 0.10, 0.08)   # most frequent first, never tied
USERS = 40
RECORDS_PER_DOC = 100
SIZES = tuple(2 ** k for k in range(13, 21))


@dataclass(frozen=True)
class Record:
    record_id: int
    user: str
    label: str
    text: str

    def line(self) -> str:
        return f"record {self.record_id:07d} | user {self.user} | label: {self.label} | {self.text}"


def count_question(label: str) -> str:
    return f"How many records are labelled '{label}'?"


TOP_QUESTION = "Which label is the most frequent?"


def pairs_question(label: str) -> str:
    return f"Which pairs of users both have records labelled '{label}'?"


def _pools(rng: random.Random, labels: list[str]) -> dict[str, list[str]]:
    everyone = [f"u{i:03d}" for i in range(1, USERS + 1)]
    # The two rarest labels come from a handful of users: C(k, 2) pairs, k in 4..7.
    return {label: (rng.sample(everyone, rng.randint(4, 7)) if rank >= len(labels) - 2 else everyone)
            for rank, label in enumerate(labels)}


def _records(rng: random.Random, size: int, labels: list[str]
             ) -> tuple[list[Record], list[list[str]], int]:
    pools = _pools(rng, labels)
    sentences = docstring_sentences()
    records: list[Record] = []
    docs: list[list[str]] = []
    tokens = 0
    while True:
        block = []
        for _ in range(RECORDS_PER_DOC):
            label = rng.choices(labels, weights=_WEIGHTS)[0]
            record = Record(len(records) + len(block) + 1, rng.choice(pools[label]), label,
                            rng.choice(sentences))
            block.append(record)
        lines = [r.line() for r in block]
        n = count_tokens("\n".join(lines) + "\n")
        if tokens + n > size:
            # Fill the rest of the budget record by record (each line ~35 tokens).
            for record, line in zip(block, lines):
                cost = count_tokens(line + "\n")
                if tokens + cost > size:
                    break
                records.append(record)
                tokens += cost
                docs.append([line]) if not docs or len(docs[-1]) >= RECORDS_PER_DOC else docs[-1].append(line)
            return records, docs, tokens
        records.extend(block)
        docs.append(lines)
        tokens += n


def truth(records: list[Record]) -> dict:
    """Every answer the suite can ask about, recomputed from the records."""
    counts = Counter(r.label for r in records)
    users = defaultdict(set)
    for r in records:
        users[r.label].add(r.user)
    pairs = {label: [f"{a}-{b}" for a, b in itertools.combinations(sorted(us), 2)]
             for label, us in users.items()}
    ranked = counts.most_common()
    top = ranked[0][0] if ranked and (len(ranked) == 1 or ranked[0][1] > ranked[1][1]) else None
    return {"counts": counts, "pairs": pairs, "top": top}


def generate(seed: int, size: int) -> Case:
    rng = random.Random(f"oolong:{seed}:{size}")
    labels = list(LABELS)
    rng.shuffle(labels)                         # which label is common is seeded too
    records, docs, tokens = _records(rng, size, labels)
    facts = truth(records)
    by_count = [label for label, _ in facts["counts"].most_common()]
    prefix = f"oolong-{size}"
    questions = []
    for label in dict.fromkeys([by_count[0], by_count[len(by_count) // 2], by_count[-1]]):
        questions.append(Question(f"{prefix}-count-{label}", count_question(label),
                                  str(facts["counts"][label]), "label-count"))
    if facts["top"] is not None:
        questions.append(Question(f"{prefix}-top", TOP_QUESTION, facts["top"], "label-top"))
    for label in labels[-2:]:                   # the small-pool labels
        if len(facts["pairs"].get(label, [])) >= 1:
            questions.append(Question(f"{prefix}-pairs-{label}", pairs_question(label),
                                      ", ".join(facts["pairs"][label]), "label-pairs"))
    documents = [{"path": f"records/part-{i:05d}.txt", "text": "\n".join(lines) + "\n"}
                 for i, lines in enumerate(docs)]
    return Case("oolong", size, seed, documents, questions, tokens,
                notes={"records": len(records), "labels": dict(facts["counts"])})


def parse_records(text: str) -> list[Record]:
    """Read records back from corpus text (tests re-derive answers this way)."""
    out = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(" | ", 3)]
        if len(parts) == 4 and parts[0].startswith("record ") and parts[2].startswith("label: "):
            out.append(Record(int(parts[0][7:]), parts[1][5:], parts[2][7:], parts[3]))
    return out
