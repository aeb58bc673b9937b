"""Build one bucket's shard: read its files, decode, hash, and (unless the
bucket's content key matches the previous shard) chunk, tokenise and write
it. Runs in the driver (in-process ingest) or in a Ray worker; everything in
and out is small and picklable, and a bucket's text lives only while its
shard is built, so memory does not grow with the corpus."""
from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from rlm_ray import storage
from rlm_ray.corpus.chunking import Chunk, chunk_text, count_file_lines
from rlm_ray.corpus.documents import Document, decode
from rlm_ray.corpus.layout import CHUNK_SCHEMA, SCHEMA_VERSION, SHARD_DIR
from rlm_ray.corpus.sources import RawFile
from rlm_ray.errors import UserError
from rlm_ray.tokens import ENCODING, count_tokens_batch

ROW_GROUP_CHUNKS = 64            # small row groups so path/doc filters prune


def bucket_key(docs: list[Document], chunk_tokens: int) -> str:
    # Everything that determines the shard's bytes, so equal key == equal file.
    basis = json.dumps([SCHEMA_VERSION, ENCODING, chunk_tokens, [(d.path, d.sha256) for d in docs]])
    return hashlib.sha256(basis.encode()).hexdigest()


def shard_file_name(index: int, key: str) -> str:
    return f"{SHARD_DIR}/part-{index:04d}-{key[:16]}.parquet"


@dataclass
class BucketJob:
    index: int
    files: list[RawFile]                 # sorted by path
    old_file: str | None = None          # the previous shard of this bucket, if any
    old_paths: frozenset[str] = frozenset()   # documents the previous docs table knows
    local_only: bool = False             # reads spooled files: must run on the driver's node

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class BucketResult:
    index: int
    file: str | None                     # None: every file was skipped (empty / binary)
    key: str = ""
    kept: bool = False                   # the previous shard holds exactly these documents
    file_bytes: int = 0
    doc_rows: list[dict] = field(default_factory=list)   # new rows (empty when kept)
    paths: list[str] = field(default_factory=list)       # the bucket's documents, sorted
    skips: Counter = field(default_factory=Counter)
    replaced: int = 0


def build_bucket(job: BucketJob, out: str, chunk_tokens: int, threads: int = 1) -> BucketResult:
    docs: list[Document] = []
    result = BucketResult(job.index, None)
    for raw in job.files:
        doc, reason, replaced = decode(raw)
        if reason:
            result.skips[reason] += 1
        else:
            docs.append(doc)
            result.replaced += replaced
    if not docs:
        return result
    result.key = bucket_key(docs, chunk_tokens)
    result.file = shard_file_name(job.index, result.key)
    result.paths = [d.path for d in docs]
    if result.file == job.old_file and all(p in job.old_paths for p in result.paths):
        result.kept = True
        return result
    chunks = [chunk_text(d.text, chunk_tokens) for d in docs]
    flat = count_tokens_batch([c.text for doc_chunks in chunks for c in doc_chunks], num_threads=threads)
    counts, at = [], 0
    for doc_chunks in chunks:
        counts.append(flat[at:at + len(doc_chunks)])
        at += len(doc_chunks)
    data = _shard_bytes(docs, chunks, counts)
    write(out, result.file, data)
    result.file_bytes = len(data)
    result.doc_rows = [{
        "doc_id": d.doc_id, "path": d.path, "n_lines": count_file_lines(d.text),
        "n_chunks": len(c), "n_tokens": sum(n), "sha256": d.sha256, "bytes": d.n_bytes,
        "shard": result.file,
    } for d, c, n in zip(docs, chunks, counts)]
    return result


def build_buckets(jobs: list[BucketJob], out: str, chunk_tokens: int, threads: int = 1) -> list[BucketResult]:
    """One Ray task's worth: several small buckets, to amortise task overhead."""
    return [build_bucket(job, out, chunk_tokens, threads) for job in jobs]


def _shard_bytes(docs: list[Document], chunks: list[list[Chunk]], counts: list[list[int]]) -> bytes:
    cols: dict[str, list] = {name: [] for name in CHUNK_SCHEMA.names}
    for doc, doc_chunks, doc_counts in zip(docs, chunks, counts):
        for position, (chunk, n_tokens) in enumerate(zip(doc_chunks, doc_counts)):
            cols["doc_id"].append(doc.doc_id)
            cols["path"].append(doc.path)
            cols["chunk_id"].append(position)
            cols["start_line"].append(chunk.start_line)
            cols["end_line"].append(chunk.end_line)
            cols["text"].append(chunk.text)
            cols["n_tokens"].append(n_tokens)
            cols["sha256"].append(doc.sha256)
    sink = io.BytesIO()
    pq.write_table(pa.table(cols, schema=CHUNK_SCHEMA), sink, compression="zstd",
                   row_group_size=ROW_GROUP_CHUNKS)
    return sink.getvalue()


def write(out: str, name: str, data: bytes) -> None:
    try:
        storage.write_bytes_atomic(storage.join(out, name), data)
    except OSError as exc:
        raise UserError(f"cannot write {storage.join(out, name)}: {exc}") from None
