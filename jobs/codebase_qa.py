"""Codebase QA as a Ray job: ingest a repository (a directory, a .tar/.tar.gz/
.zip archive or an s3:// prefix) into a corpus, then answer a file of questions
over it with a pool of RLM actors.

    ray job submit --working-dir . -- python jobs/codebase_qa.py ./my-repo \
        --corpus s3://bucket/corpora/my-repo --queries questions.jsonl \
        --out s3://bucket/runs/my-repo --model openai/gpt-4o-mini

Rerunning the same command resumes (finished questions are skipped, cached
model calls are free); the re-ingest rewrites only what changed.
"""
from __future__ import annotations

import sys
from pathlib import Path

# Import rlm_ray from the job's working dir (the code that was submitted),
# ahead of whatever version the cluster's Python has installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlm_ray.batch.job_entry import ingest_then_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return ingest_then_run(
        argv, prog="codebase_qa.py", chunk_tokens=2000,
        description="Ingest a codebase, then answer a file of questions over it.",
        source_help="a directory, .tar/.tar.gz/.zip archive or s3:// prefix of source code")


if __name__ == "__main__":
    sys.exit(main())
