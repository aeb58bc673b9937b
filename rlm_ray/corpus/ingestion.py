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
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from rlm_ray import storage
from rlm_ray.corpus.documents import unique_paths
from rlm_ray.corpus.layout import DOC_SCHEMA, MANIFEST, SCHEMA_VERSION, SHARD_DIR, read_manifest
from rlm_ray.corpus.parallel import make_plan, run
from rlm_ray.corpus.shards import BucketJob, BucketResult, write
from rlm_ray.corpus.sources import (MAX_ARCHIVE_BYTES, MAX_ARCHIVE_MEMBERS, ListOptions, RawFile, Spool,
                                    list_source)
from rlm_ray.errors import UserError
from rlm_ray.tokens import ENCODING

TARGET_SHARD_BYTES = 600_000     # ~64 shards for the 10M-token stdlib: parallel scans, cheap rewrites
MAX_BUCKETS = 4096


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


def ingest(sources: Sequence[str], out: str, *, chunk_tokens: int = 2000,
           max_file_bytes: int = 2_000_000, exclude: Sequence[str] = (),
           name: str | None = None, parallelism: int | None = None,
           max_archive_bytes: int = MAX_ARCHIVE_BYTES,
           max_archive_members: int = MAX_ARCHIVE_MEMBERS, backend: str | None = None) -> dict:
    """Ingest `sources` into the corpus at `out`; returns the new manifest.

    `parallelism`: bucket builds at once; 1 runs in this process, more run as
    Ray tasks (a running cluster is used as is); None: the cluster's CPUs, or
    in-process for a small corpus when no cluster is running. `backend` forces
    one of rlm_ray.corpus.parallel.BACKENDS (benchmarks compare like with like)."""
    started = time.perf_counter()
    sources = [str(s) for s in sources]
    if not sources:
        raise UserError("give at least one source to ingest")
    if chunk_tokens < 16:
        raise UserError(f"--chunk-tokens must be at least 16, got {chunk_tokens}")
    for flag, value in (("--max-file-bytes", max_file_bytes), ("--max-archive-bytes", max_archive_bytes),
                        ("--max-archive-members", max_archive_members)):
        if value < 1:
            raise UserError(f"{flag} must be positive, got {value}")
    out = str(out)
    _check_out(out)
    with tempfile.TemporaryDirectory(prefix="rlm-ingest-spool-") as spool_dir:
        opts = ListOptions(max_file_bytes=max_file_bytes, exclude=_exclude_out(out, sources, exclude),
                           max_archive_bytes=max_archive_bytes, max_archive_members=max_archive_members,
                           spool=Spool(spool_dir))
        files = unique_paths([(src, list_source(src, opts)) for src in sources])
        plan = make_plan(parallelism, sum(f.size for f in files), backend)
        previous = _previous_manifest(out)
        n_buckets = _choose_buckets(sum(f.size for f in files), previous, chunk_tokens)
        old_docs = _previous_docs(out, previous)
        jobs = _jobs(files, n_buckets, previous if previous and previous.get("n_buckets") == n_buckets else None,
                     old_docs, spooled=opts.spool.count > 0)
        del files
        # Workers may not share this process's working directory: give them an absolute target.
        target = out if storage.is_s3(out) else storage.filesystem(out)[1]
        results = sorted(run(jobs, target, chunk_tokens, plan), key=lambda r: r.index)
    for result in results:
        opts.skips.update(result.skips)
    results = [r for r in results if r.file]
    if not results:
        found = ", ".join(f"{k}={v}" for k, v in sorted(opts.skips.items())) or "no files"
        raise UserError(f"no documents to ingest in {' '.join(sources)} ({found})")

    shard_rows, doc_rows = [], []
    for result in results:
        rows = [dict(old_docs[p]) for p in result.paths] if result.kept else result.doc_rows
        file_bytes = _old_file_bytes(previous, result.file) if result.kept else result.file_bytes
        shard_rows.append(_shard_row(result, rows, file_bytes))
        doc_rows.extend(rows)
    doc_rows.sort(key=lambda d: d["path"])
    written = sum(1 for r in results if not r.kept)

    docs_table = pa.Table.from_pylist(doc_rows, schema=DOC_SCHEMA)
    sink = io.BytesIO()
    pq.write_table(docs_table, sink, compression="zstd")
    docs_digest = hashlib.sha256(sink.getvalue()).hexdigest()[:16]
    docs_file = f"docs-{docs_digest}.parquet"
    write(out, docs_file, sink.getvalue())

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
        "non_utf8_replaced": sum(r.replaced for r in results),
        "docs_file": docs_file,
        "shards": shard_rows,
        "ingest": {
            "shards_written": written,
            "shards_kept": len(results) - written,
            "shards_deleted": sum(1 for f in stale if f.startswith(SHARD_DIR + "/")),
            "parallelism": plan.label,
            "seconds": 0.0,
        },
    }
    manifest["ingest"]["seconds"] = round(time.perf_counter() - started, 3)
    write(out, MANIFEST, json.dumps(manifest, indent=1).encode())
    for rel in stale:  # only now: the new manifest no longer points at them
        storage.delete(storage.join(out, rel))
    return manifest


def _jobs(files: list[RawFile], n_buckets: int, previous: dict | None, old_docs: dict[str, dict],
          spooled: bool) -> list[BucketJob]:
    """Files grouped by bucket (each bucket sorted by path), with what the
    previous corpus had in that bucket so a worker can skip an unchanged one."""
    by_bucket: dict[int, list[RawFile]] = {}
    for f in files:
        by_bucket.setdefault(_bucket_of(f.path, n_buckets), []).append(f)
    old_shards = {s["bucket"]: s["file"] for s in previous["shards"]} if previous else {}
    jobs = []
    for index in sorted(by_bucket):
        bucket_files = sorted(by_bucket[index], key=lambda f: f.path)
        old_file = old_shards.get(index)
        known = frozenset(f.path for f in bucket_files if f.path in old_docs) if old_file else frozenset()
        jobs.append(BucketJob(index, bucket_files, old_file, known, local_only=spooled))
    return jobs


def _shard_row(result: BucketResult, docs: list[dict], file_bytes: int) -> dict:
    return {
        "file": result.file, "bucket": result.index, "key": result.key,
        "documents": len(docs), "chunks": sum(d["n_chunks"] for d in docs),
        "tokens": sum(d["n_tokens"] for d in docs), "file_bytes": file_bytes,
    }


def _old_file_bytes(previous: dict, file_name: str) -> int:
    return next(s["file_bytes"] for s in previous["shards"] if s["file"] == file_name)


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
