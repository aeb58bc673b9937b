"""BrowseComp-Plus (`Tevatron/browsecomp-plus` + `Tevatron/browsecomp-plus-corpus`).

The queries dataset ships obfuscated (each field XOR-encrypted and base64'd
against its canary string). Its publishers' own decryption script writes a
JSONL of plain rows {query_id, query, answer, gold_docs, negative_docs,
evidence_docs} (each *_docs a list of {docid, text}); that decrypted JSONL is
what this loader reads, never the obfuscated Parquet. The corpus (Parquet
shards of {docid, text, url}) supplies the filler documents.

As in the paper: each sampled query gets 1,000 documents (its evidence and
gold documents, then its hard negatives, then documents drawn at random from
the corpus with the run's seed), ingested as that query's own corpus.
"""
from __future__ import annotations

import base64
import binascii
import random
from pathlib import Path

from rlm_ray.bench.paper import scoring
from rlm_ray.bench.paper.registry import LoadOptions, dataset
from rlm_ray.bench.paper.tasks import Task, iter_files, read_rows, require_columns, sample
from rlm_ray.errors import UserError

QUERY_COLUMNS = ("query_id", "query", "answer", "gold_docs", "negative_docs", "evidence_docs")
CORPUS_COLUMNS = ("docid", "text")


def looks_obfuscated(text: str) -> bool:
    """A field still in the shipped form: base64 without spaces that does not decode to text."""
    text = str(text).strip()
    if not text or " " in text or len(text) % 4:
        return False
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        raw.decode("utf-8")
        return not raw.isascii()
    except UnicodeDecodeError:
        return True


def _read(files: list[Path]) -> tuple[list[dict], list[dict]]:
    queries: list[dict] = []
    corpus: list[dict] = []
    for path in iter_files(files, (".jsonl", ".json", ".parquet")):
        rows = read_rows(path)
        if rows and "query" in rows[0]:
            require_columns(rows, QUERY_COLUMNS, str(path))
            queries += rows
        elif rows and "docid" in rows[0]:
            require_columns(rows, CORPUS_COLUMNS, str(path))
            corpus += rows
    if not queries:
        raise UserError("BrowseComp-Plus: no queries among --data (the decrypted JSONL the "
                        "publishers' decryption script writes, with query_id, query, answer, ...)")
    if any(looks_obfuscated(q["query"]) and looks_obfuscated(q["answer"]) for q in queries[:5]):
        raise UserError("BrowseComp-Plus: these queries are still obfuscated; run the "
                        "publishers' decryption script and pass the JSONL it writes")
    return queries, corpus


def documents_for(query: dict, corpus: list[dict], size: int, seed: int) -> list[tuple[str, str]]:
    """Evidence and gold documents first, then hard negatives, then random corpus documents."""
    chosen: dict[str, str] = {}
    for key in ("evidence_docs", "gold_docs", "negative_docs"):
        for doc in query.get(key) or []:
            if len(chosen) < size or key != "negative_docs":
                chosen.setdefault(str(doc["docid"]), str(doc.get("text") or ""))
    pool = [d for d in corpus if str(d["docid"]) not in chosen]
    rng = random.Random(f"{seed}:{query['query_id']}")
    for doc in rng.sample(pool, min(len(pool), max(0, size - len(chosen)))):
        chosen[str(doc["docid"])] = str(doc.get("text") or "")
    return [(f"doc-{docid}.txt", text) for docid, text in sorted(chosen.items())]


def _score(task: Task, answer: str | None) -> scoring.Scored:
    # The fallback when no --judge-model is given; the run names it in the table.
    return scoring.score_contains(answer, task.expected, "contains (no judge)")


@dataset("browsecomp-plus", title="BrowseComp-Plus (1K documents)", score=_score, judged=True,
         source="Tevatron/browsecomp-plus (decrypted) + Tevatron/browsecomp-plus-corpus")
def load_browsecomp(files: list[Path], opts: LoadOptions) -> list[Task]:
    queries, corpus = _read(files)
    queries.sort(key=lambda q: str(q["query_id"]))
    return [Task(query_id=f"bcp-{q['query_id']}", question=str(q["query"]),
                 expected=str(q["answer"]),
                 documents=tuple(documents_for(q, corpus, opts.docs_per_query, opts.seed)))
            for q in sample(queries, opts.limit, opts.seed)]
