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


def _read_queries(files: list[Path]) -> tuple[list[dict], list[Path]]:
    """The decrypted queries, and the corpus shards (read lazily: ~100K documents)."""
    queries: list[dict] = []
    shards: list[Path] = []
    for path in iter_files(files, (".jsonl", ".json", ".parquet")):
        if path.name.lower().endswith(".parquet"):
            import pyarrow.parquet as pq

            names = pq.read_schema(path).names
            if "docid" in names:
                if "text" not in names:
                    raise UserError(f"{path}: the corpus lacks the published column text")
                shards.append(path)
                continue
        rows = read_rows(path)
        if rows and "docid" in rows[0] and "query" not in rows[0]:
            require_columns(rows, CORPUS_COLUMNS, str(path))
            shards.append(path)
        elif rows:
            require_columns(rows, QUERY_COLUMNS, str(path))
            queries += rows
    if not queries:
        raise UserError("BrowseComp-Plus: no queries among --data (the decrypted JSONL the "
                        "publishers' decryption script writes, with query_id, query, answer, ...)")
    if any(looks_obfuscated(q["query"]) and looks_obfuscated(q["answer"]) for q in queries[:5]):
        raise UserError("BrowseComp-Plus: these queries are still obfuscated; run the "
                        "publishers' decryption script and pass the JSONL it writes")
    return queries, shards


def _corpus_ids(shards: list[Path]) -> list[str]:
    ids: list[str] = []
    for shard in shards:
        ids += [str(r["docid"]) for r in read_rows(shard, ["docid"])]
    return sorted(set(ids))


def _corpus_texts(shards: list[Path], wanted: set[str]) -> dict[str, str]:
    """Texts of the chosen corpus documents only (a filter pushed into each shard)."""
    texts: dict[str, str] = {}
    for shard in shards:
        if shard.name.lower().endswith(".parquet"):
            import pyarrow.parquet as pq

            table = pq.read_table(shard, columns=["docid", "text"],
                                  filters=[("docid", "in", sorted(wanted))])
            rows = table.to_pylist()
        else:
            rows = [r for r in read_rows(shard) if str(r["docid"]) in wanted]
        texts.update((str(r["docid"]), str(r["text"] or "")) for r in rows)
    return texts


def documents_for(query: dict, corpus_ids: list[str], size: int, seed: int
                  ) -> tuple[dict[str, str], list[str]]:
    """The query's own documents (evidence and gold first, then hard negatives up to
    `size`) and the corpus ids drawn at random to fill the rest."""
    own: dict[str, str] = {}
    for key in ("evidence_docs", "gold_docs", "negative_docs"):
        for doc in query.get(key) or []:
            if len(own) < size or key != "negative_docs":
                own.setdefault(str(doc["docid"]), str(doc.get("text") or ""))
    pool = [d for d in corpus_ids if d not in own]
    rng = random.Random(f"{seed}:{query['query_id']}")
    return own, rng.sample(pool, min(len(pool), max(0, size - len(own))))


def _score(task: Task, answer: str | None) -> scoring.Scored:
    # The fallback when no --judge-model is given; the run names it in the table.
    return scoring.score_contains(answer, task.expected, "contains (no judge)")


@dataset("browsecomp-plus", title="BrowseComp-Plus (1K documents)", score=_score, judged=True,
         source="Tevatron/browsecomp-plus (decrypted) + Tevatron/browsecomp-plus-corpus")
def load_browsecomp(files: list[Path], opts: LoadOptions) -> list[Task]:
    queries, shards = _read_queries(files)
    queries = sample(sorted(queries, key=lambda q: str(q["query_id"])), opts.limit, opts.seed)
    corpus_ids = _corpus_ids(shards)
    chosen = [documents_for(q, corpus_ids, opts.docs_per_query, opts.seed) for q in queries]
    texts = _corpus_texts(shards, {d for _, fill in chosen for d in fill}) if shards else {}
    tasks = []
    for q, (own, fill) in zip(queries, chosen):
        docs = {**own, **{d: texts.get(d, "") for d in fill}}
        tasks.append(Task(query_id=f"bcp-{q['query_id']}", question=str(q["query"]),
                          expected=str(q["answer"]),
                          documents=tuple((f"doc-{d}.txt", t) for d, t in sorted(docs.items()))))
    return tasks
