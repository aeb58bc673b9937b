"""What every suite generator produces: one `Case` per corpus size, holding
the corpus documents and the questions with their independently computed
answers. Suites never type an answer in; they derive it from what they generated.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Question:
    query_id: str
    question: str
    answer: str
    family: str   # a row of the families table in docs/architecture.md

    def row(self) -> dict:
        return {"query_id": self.query_id, "question": self.question,
                "answer": self.answer, "family": self.family}


@dataclass
class Case:
    suite: str
    size: int                     # the nominal size asked for (tokens)
    seed: int
    documents: list[dict]         # {"path", "text"}: a JSONL documents source for ingest
    questions: list[Question]
    tokens: int                   # tokens actually generated (cl100k_base)
    notes: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.suite}-seed{self.seed}-{self.size}"

    def write(self, folder: Path) -> tuple[Path, Path]:
        """`docs.jsonl` and `queries.jsonl` in `folder`, each written whole or not at all."""
        folder.mkdir(parents=True, exist_ok=True)
        docs = folder / "docs.jsonl"
        queries = folder / "queries.jsonl"
        _write_jsonl(docs, self.documents)
        _write_jsonl(queries, (q.row() for q in self.questions))
        return docs, queries


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False))
            out.write("\n")
    os.replace(tmp, path)


Generator = Callable[[int, int], Case]   # (seed, size_tokens) -> Case


@dataclass(frozen=True)
class Suite:
    name: str
    generate: Generator
    default_sizes: tuple[int, ...]
    description: str
