"""Ingest sources into a corpus: Parquet shards (zstd, small row groups), a
docs table and `manifest.json`, local or on S3.

Atomicity: shard and docs files are content-addressed (their name carries a
hash of what they hold) and written whole (temp + rename locally, one PUT on
S3); `manifest.json` is written last and is the only thing readers trust, so
a crash leaves the previous corpus intact. Old files are deleted only after
the new manifest is in place.

Incremental: documents go to hash buckets by path; a bucket whose (path,
sha256) list did not change keeps its shard file untouched and is not even
re-tokenised.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from rlm_ray import storage
from rlm_ray.corpus.chunking import Chunk, chunk_text, count_file_lines
from rlm_ray.corpus.documents import Document, load_documents, unique_paths
from rlm_ray.corpus.layout import CHUNK_SCHEMA, DOC_SCHEMA, MANIFEST, SCHEMA_VERSION, SHARD_DIR, read_manifest
from rlm_ray.corpus.sources import ListOptions, list_source
from rlm_ray.errors import UserError
from rlm_ray.tokens import ENCODING, count_tokens_batch

TARGET_SHARD_BYTES = 600_000     # ~64 shards for the 10M-token stdlib: parallel scans, cheap rewrites
ROW_GROUP_CHUNKS = 64            # small row groups so path/doc filters prune
MAX_BUCKETS = 4096
WRITE_THREADS = 4


@dataclass
class Bucket:
    index: int
    docs: list[Document] = field(default_factory=list)

    def key(self, chunk_tokens: int) -> str:
        # Everything that determines the shard's bytes, so equal key == equal file.
        basis = json.dumps([SCHEMA_VERSION, ENCODING, chunk_tokens, [(d.path, d.sha256) for d in self.docs]])
        return hashlib.sha256(basis.encode()).hexdigest()

    def file_name(self, chunk_tokens: int) -> str:
        return f"{SHARD_DIR}/part-{self.index:04d}-{self.key(chunk_tokens)[:16]}.parquet"


def _bucket_of(path: str, n_buckets: int) -> int:
    return int.from_bytes(hashlib.sha256(path.encode("utf-8")).digest()[:8], "big") % n_buckets


def _choose_buckets(total_bytes: int, previous: dict | None, chunk_tokens: int) -> int:
    ideal = max(1, min(MAX_BUCKETS, math.ceil(total_bytes / TARGET_SHARD_BYTES)))
    if previous and previous.get("chunk_tokens") == chunk_tokens:
        kept = int(previous.get("n_buckets", 0))
        # Keep the old layout (so unchanged shards survive) unless the corpus changed size a lot.
        if kept and ideal / 4 <= kept <= ideal * 4:
            return kept
    return ideal


def _previous_manifest(out: str) -> dict | None:
    if not storage.exists(storage.join(out, MANIFEST)):
        return None
    try:
        return read_manifest(out)
    except UserError:
        return None   # unreadable or old schema: rebuild everything


def _previous_docs(out: str, previous: dict | None) -> dict[str, dict]:
    if not previous:
        return {}
    try:
        table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(out, previous["docs_file"]))))
    except (OSError, KeyError):
        return {}
    return {row["path"]: row for row in table.to_pylist()}


def _check_out(out: str) -> None:
    if storage.is_s3(out):
        fs, path = storage.filesystem(out)
        bucket = path.split("/", 1)[0]
        try:
            info = fs.get_file_info(bucket)
        except OSError as exc:
            raise UserError(f"cannot reach {out}: {exc}") from None
        if info.type.name == "NotFound":
            raise UserError(f"S3 bucket {bucket!r} for --out {out} does not exist")
        return
    local = storage.filesystem(out)[1]
    if os.path.isfile(local):
        raise UserError(f"--out {out} is a file; give a directory (new or an existing corpus)")
    parent = local
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK):
        raise UserError(f"--out {out} is not writable")


def _exclude_out(out: str, sources: Sequence[str], exclude: Sequence[str]) -> tuple[str, ...]:
    """A corpus written inside a source directory must not ingest itself."""
    extra = []
    if not storage.is_s3(out):
        out_abs = storage.filesystem(out)[1]
        for src in sources:
            if storage.is_s3(src):
                continue
            src_abs = storage.filesystem(src)[1]
            if out_abs.startswith(src_abs.rstrip("/") + "/"):
                extra.append("/" + os.path.relpath(out_abs, src_abs) + "/")
    return tuple(exclude) + tuple(extra)


def _chunk_documents(docs: list[Document], chunk_tokens: int) -> list[list[Chunk]]:
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return list(pool.map(lambda d: chunk_text(d.text, chunk_tokens), docs))


def _shard_bytes(bucket: Bucket, chunks: list[list[Chunk]], counts: list[list[int]]) -> bytes:
    cols: dict[str, list] = {name: [] for name in CHUNK_SCHEMA.names}
    for doc, doc_chunks, doc_counts in zip(bucket.docs, chunks, counts):
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


def _write(out: str, name: str, data: bytes) -> None:
    try:
        storage.write_bytes_atomic(storage.join(out, name), data)
    except OSError as exc:
        raise UserError(f"cannot write {storage.join(out, name)}: {exc}") from None


def ingest(sources: Sequence[str], out: str, *, chunk_tokens: int = 2000,
           max_file_bytes: int = 2_000_000, exclude: Sequence[str] = (),
           name: str | None = None) -> dict:
    """Ingest `sources` into the corpus at `out`; returns the new manifest."""
    started = time.perf_counter()
    sources = [str(s) for s in sources]
    if not sources:
        raise UserError("give at least one source to ingest")
    if chunk_tokens < 16:
        raise UserError(f"--chunk-tokens must be at least 16, got {chunk_tokens}")
    if max_file_bytes < 1:
        raise UserError(f"--max-file-bytes must be positive, got {max_file_bytes}")
    out = str(out)
    _check_out(out)

    opts = ListOptions(max_file_bytes=max_file_bytes, exclude=_exclude_out(out, sources, exclude))
    files = unique_paths([(src, list_source(src, opts)) for src in sources])
    docs, replaced = load_documents(files, opts.skips)
    if not docs:
        found = ", ".join(f"{k}={v}" for k, v in sorted(opts.skips.items())) or "no files"
        raise UserError(f"no documents to ingest in {' '.join(sources)} ({found})")

    previous = _previous_manifest(out)
    n_buckets = _choose_buckets(sum(d.n_bytes for d in docs), previous, chunk_tokens)
    buckets = [Bucket(i) for i in range(n_buckets)]
    for doc in docs:  # docs are sorted by path, so each bucket is too
        buckets[_bucket_of(doc.path, n_buckets)].docs.append(doc)
    buckets = [b for b in buckets if b.docs]

    old_files = {s["file"] for s in previous["shards"]} if previous else set()
    old_docs = _previous_docs(out, previous)
    kept = [b for b in buckets if b.file_name(chunk_tokens) in old_files
            and all(d.path in old_docs for d in b.docs)]
    kept_ids = {b.index for b in kept}
    fresh = [b for b in buckets if b.index not in kept_ids]

    shard_rows, doc_rows = _build_fresh(out, fresh, chunk_tokens)
    for bucket in kept:
        shard_rows.append(_kept_shard_row(bucket, old_docs, chunk_tokens, previous))
        doc_rows.extend(dict(old_docs[d.path]) for d in bucket.docs)
    shard_rows.sort(key=lambda s: s["bucket"])
    doc_rows.sort(key=lambda d: d["path"])

    docs_table = pa.Table.from_pylist(doc_rows, schema=DOC_SCHEMA)
    sink = io.BytesIO()
    pq.write_table(docs_table, sink, compression="zstd")
    docs_digest = hashlib.sha256(sink.getvalue()).hexdigest()[:16]
    docs_file = f"docs-{docs_digest}.parquet"
    _write(out, docs_file, sink.getvalue())

    new_files = {s["file"] for s in shard_rows} | {docs_file}
    stale = sorted(_existing_corpus_files(out) - new_files)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "name": name or (previous or {}).get("name") or os.path.basename(out.rstrip("/")),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": sources,
        "tokenizer": ENCODING,
        "chunk_tokens": chunk_tokens,
        "max_file_bytes": max_file_bytes,
        "exclude": list(exclude),
        "n_buckets": n_buckets,
        "documents": len(doc_rows),
        "chunks": sum(s["chunks"] for s in shard_rows),
        "tokens": sum(s["tokens"] for s in shard_rows),
        "bytes": sum(d["bytes"] for d in doc_rows),
        "skipped": dict(sorted(opts.skips.items())),
        "non_utf8_replaced": replaced,
        "docs_file": docs_file,
        "shards": shard_rows,
        "ingest": {
            "shards_written": len(fresh),
            "shards_kept": len(kept),
            "shards_deleted": sum(1 for f in stale if f.startswith(SHARD_DIR + "/")),
            "seconds": 0.0,
        },
    }
    manifest["ingest"]["seconds"] = round(time.perf_counter() - started, 3)
    _write(out, MANIFEST, json.dumps(manifest, indent=1).encode())
    for rel in stale:  # only now: the new manifest no longer points at them
        storage.delete(storage.join(out, rel))
    return manifest


def _build_fresh(out: str, fresh: list[Bucket], chunk_tokens: int) -> tuple[list[dict], list[dict]]:
    all_docs = [d for b in fresh for d in b.docs]
    chunks = _chunk_documents(all_docs, chunk_tokens)
    flat_counts = count_tokens_batch([c.text for doc_chunks in chunks for c in doc_chunks])
    counts, at = [], 0
    for doc_chunks in chunks:
        counts.append(flat_counts[at:at + len(doc_chunks)])
        at += len(doc_chunks)
    per_doc = dict(zip((d.path for d in all_docs), zip(chunks, counts)))

    def write_bucket(bucket: Bucket) -> tuple[dict, list[dict]]:
        b_chunks = [per_doc[d.path][0] for d in bucket.docs]
        b_counts = [per_doc[d.path][1] for d in bucket.docs]
        data = _shard_bytes(bucket, b_chunks, b_counts)
        file_name = bucket.file_name(chunk_tokens)
        _write(out, file_name, data)
        docs = [{
            "doc_id": d.doc_id, "path": d.path, "n_lines": count_file_lines(d.text),
            "n_chunks": len(c), "n_tokens": sum(n), "sha256": d.sha256, "bytes": d.n_bytes,
            "shard": file_name,
        } for d, c, n in zip(bucket.docs, b_chunks, b_counts)]
        return _shard_row(bucket, file_name, docs, chunk_tokens, len(data)), docs

    shard_rows, doc_rows = [], []
    # pyarrow's zstd and the file writes release the GIL: overlap them.
    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        for shard, docs in pool.map(write_bucket, fresh):
            shard_rows.append(shard)
            doc_rows.extend(docs)
    return shard_rows, doc_rows


def _shard_row(bucket: Bucket, file_name: str, docs: list[dict], chunk_tokens: int, file_bytes: int) -> dict:
    return {
        "file": file_name, "bucket": bucket.index, "key": bucket.key(chunk_tokens),
        "documents": len(docs), "chunks": sum(d["n_chunks"] for d in docs),
        "tokens": sum(d["n_tokens"] for d in docs), "file_bytes": file_bytes,
    }


def _kept_shard_row(bucket: Bucket, old_docs: dict[str, dict], chunk_tokens: int, previous: dict) -> dict:
    file_name = bucket.file_name(chunk_tokens)
    old = next(s for s in previous["shards"] if s["file"] == file_name)
    docs = [old_docs[d.path] for d in bucket.docs]
    return _shard_row(bucket, file_name, docs, chunk_tokens, old["file_bytes"])


def _existing_corpus_files(out: str) -> set[str]:
    """Files this module may have written earlier (shards, docs tables)."""
    names = {e.relpath for e in storage.list_prefix(storage.join(out, SHARD_DIR))}
    found = {f"{SHARD_DIR}/{n}" for n in names if n.endswith(".parquet")}
    if not storage.is_s3(out) and os.path.isdir(storage.filesystem(out)[1]):
        found |= {n for n in os.listdir(storage.filesystem(out)[1]) if n.startswith("docs-")}
    elif storage.is_s3(out):
        found |= {e.relpath for e in storage.list_prefix(out)
                  if "/" not in e.relpath and e.relpath.startswith("docs-")}
    return found
