"""CLI: `rlm-ray ingest` (heavy imports stay lazy)."""
from __future__ import annotations

from rlm_ray.corpus.caps import MAX_ARCHIVE_BYTES, MAX_ARCHIVE_MEMBERS


def register(commands, bench) -> None:
    ingest = commands.add_parser(
        "ingest", help="ingest codebases / archives / document tables into a corpus",
        description="Ingest SOURCE... (a directory, .tar/.tar.gz/.zip, .jsonl/.parquet of "
                    "documents, or an s3:// prefix of any of these) into CORPUS (a local "
                    "path or s3://bucket/prefix). Re-running rewrites only changed shards.")
    ingest.add_argument("sources", nargs="+", metavar="SOURCE")
    ingest.add_argument("--out", required=True, metavar="CORPUS")
    ingest.add_argument("--chunk-tokens", type=int, default=2000, metavar="N",
                        help="target tokens per chunk (default 2000)")
    ingest.add_argument("--max-file-bytes", type=int, default=2_000_000, metavar="N",
                        help="skip files larger than this (default 2000000)")
    ingest.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="gitignore-style pattern to skip; repeatable")
    ingest.add_argument("--name", default=None, help="a name recorded in the manifest")
    ingest.add_argument("--parallelism", type=int, default=None, metavar="N",
                        help="shard builds at once: 1 = in this process; more = Ray tasks on a "
                             "running cluster (RAY_ADDRESS), else local worker processes (default: "
                             "the cluster's CPUs; without one, in-process threads for a corpus under "
                             "256 MB, else this machine's CPUs)")
    ingest.add_argument("--max-archive-bytes", type=int, default=MAX_ARCHIVE_BYTES, metavar="N",
                        help=f"refuse an archive whose members total more uncompressed bytes "
                             f"(default {MAX_ARCHIVE_BYTES})")
    ingest.add_argument("--max-archive-members", type=int, default=MAX_ARCHIVE_MEMBERS, metavar="N",
                        help=f"refuse an archive with more members (default {MAX_ARCHIVE_MEMBERS})")
    ingest.set_defaults(func=_ingest)


def summary_line(manifest: dict, out: str) -> str:
    run = manifest["ingest"]
    skipped = ", ".join(f"{k}={v}" for k, v in manifest["skipped"].items()) or "none"
    return (f"ingested {manifest['documents']:,} documents, {manifest['chunks']:,} chunks, "
            f"{manifest['tokens']:,} tokens into {out}: shards written {run['shards_written']}, "
            f"kept {run['shards_kept']}, deleted {run['shards_deleted']}; skipped {skipped}; "
            f"non-UTF-8 replaced {manifest['non_utf8_replaced']}; {run['seconds']:.1f} s")


def _ingest(args) -> int:
    from rlm_ray.corpus.ingestion import ingest

    manifest = ingest(args.sources, args.out, chunk_tokens=args.chunk_tokens,
                      max_file_bytes=args.max_file_bytes, exclude=args.exclude, name=args.name,
                      parallelism=args.parallelism, max_archive_bytes=args.max_archive_bytes,
                      max_archive_members=args.max_archive_members)
    print(summary_line(manifest, args.out))
    return 0

