"""Document-archive QA as a Ray job: ingest documents (a `.jsonl` or
`.parquet` of `path`/`id` + `text`, or an s3:// prefix of them) into a
corpus, then answer a file of questions over it.

    ray job submit --working-dir . -- python jobs/archive_qa.py s3://bucket/docs/ \
        --corpus s3://bucket/corpora/docs --queries questions.jsonl \
        --out s3://bucket/runs/docs --model openai/gpt-4o-mini
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted rlm_ray first

from rlm_ray.batch.job_entry import ingest_then_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    # Prose chunks smaller than code: documents are read a page at a time.
    return ingest_then_run(
        argv, prog="archive_qa.py", chunk_tokens=1000,
        description="Ingest a document archive, then answer a file of questions over it.",
        source_help=".jsonl / .parquet documents (path or id, text) or an s3:// prefix")


if __name__ == "__main__":
    sys.exit(main())
