"""The scripted workloads `bench compare` gives both engines: the same
questions over the same text, with answers computed from the records.

- fan-out: one label-count question over a string of records sized so that
  the policy's map step makes exactly `chunks` sub-calls (pieces of at most
  PIECE_CHARS characters, cut at line ends, as the policy cuts a str context);
- batch: `questions` label questions (count / most frequent / pairs, cycling
  over the labels) over one smaller body of records: a corpus for rlm-ray's
  batch runner, the same text as a string for rlms.
"""
from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass

from rlm_ray.bench.suites import oolong


def _policy_piece_chars() -> int:
    """The piece size the simulator's policy cuts a str context into (its
    `context_pieces(str_limit=...)` default), so `chunks` means sub-calls."""
    try:
        from rlm_ray.sim.policy_repl_lib import context_pieces
    except ImportError:
        return 8000
    return int(inspect.signature(context_pieces).parameters["str_limit"].default)


PIECE_CHARS = _policy_piece_chars()
_CHARS_PER_TOKEN = 3.0        # generous: over-generate records, then cut to size


@dataclass(frozen=True)
class Task:
    task_id: str
    question: str
    answer: str
    family: str


@dataclass(frozen=True)
class Workload:
    text: str                 # the records as one string (rlms's context, rlm-ray's str context)
    documents: list[dict]     # the same records as corpus documents
    tasks: list[Task]
    pieces: int               # sub-calls one map over the whole text makes


class Packer:
    """Greedy line packing into pieces of <= limit chars (a longer line stays whole),
    counted incrementally so sizing a 1000-piece text stays linear."""

    def __init__(self, limit: int = PIECE_CHARS) -> None:
        self.limit, self.closed, self.current = limit, 0, -1   # -1: no open piece

    def add(self, line: str) -> None:
        if self.current >= 0 and self.current + len(line) + 1 > self.limit:
            self.closed, self.current = self.closed + 1, -1
        self.current = len(line) if self.current < 0 else self.current + len(line) + 1

    @property
    def pieces(self) -> int:
        return self.closed + (self.current >= 0)


def piece_count(lines: list[str], limit: int = PIECE_CHARS) -> int:
    packer = Packer(limit)
    for line in lines:
        packer.add(line)
    return packer.pieces


def pack_lines(lines: list[str], limit: int = PIECE_CHARS) -> list[str]:
    """The pieces themselves, cut where `Packer` cuts."""
    pieces: list[list[str]] = []
    packer = Packer(limit)
    for line in lines:
        before = packer.closed
        packer.add(line)
        if packer.closed != before or not pieces:
            pieces.append([])
        pieces[-1].append(line)
    return ["\n".join(p) for p in pieces]


def _records_for(chunks: int, seed: int) -> list[oolong.Record]:
    case = oolong.generate(seed, int(chunks * PIECE_CHARS / _CHARS_PER_TOKEN) + 4096)
    records = oolong.parse_records("".join(d["text"] for d in case.documents))
    kept, packer = [], Packer()
    for record in records:
        packer.add(record.line())
        if packer.pieces > chunks:
            break
        kept.append(record)
    if packer.pieces < chunks:
        raise ValueError(f"generated too few records for {chunks} pieces")
    return kept


def _workload(records: list[oolong.Record], tasks: list[Task]) -> Workload:
    lines = [r.line() for r in records]
    documents = [{"path": f"records/part-{i // oolong.RECORDS_PER_DOC:05d}.txt",
                  "text": "\n".join(lines[i:i + oolong.RECORDS_PER_DOC]) + "\n"}
                 for i in range(0, len(lines), oolong.RECORDS_PER_DOC)]
    return Workload("\n".join(lines) + "\n", documents, tasks, piece_count(lines))


def fanout(chunks: int, seed: int = 0) -> Workload:
    records = _records_for(chunks, seed)
    facts = oolong.truth(records)
    label = facts["counts"].most_common(1)[0][0]
    task = Task("fanout", oolong.count_question(label), str(facts["counts"][label]), "label-count")
    return _workload(records, [task])


def batch(questions: int, chunks: int, seed: int = 0) -> Workload:
    records = _records_for(chunks, seed)
    facts = oolong.truth(records)
    pool = [Task("", oolong.count_question(l), str(n), "label-count") for l, n in sorted(facts["counts"].items())]
    if facts["top"]:
        pool.append(Task("", oolong.TOP_QUESTION, facts["top"], "label-top"))
    pool += [Task("", oolong.pairs_question(l), ", ".join(p), "label-pairs")
             for l, p in sorted(facts["pairs"].items()) if p]
    tasks = [Task(f"q{i:03d}", t.question, t.answer, t.family)
             for i, t in zip(range(questions), itertools.cycle(pool))]
    return _workload(records, tasks)
