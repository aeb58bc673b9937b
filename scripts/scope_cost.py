"""What a question's scope costs on the stdlib corpus: its first call (resolve the
globs, copy the scope into its own database), a later one, a grep inside it, and
the query workers' PSS after it.

Usage: python scripts/scope_cost.py [CORPUS]   (ingests the stdlib there if missing)
"""
from __future__ import annotations

import os
import sys
import sysconfig
import time

import psutil

from rlm_ray.corpus import Corpus, ingest
from rlm_ray.engine.context_view import ContextView

SCOPES = [("email/",), ("asyncio/", "json/"), ("test/",), ("**",)]


def workers_pss_mb(corpus: Corpus) -> int:
    return sum(psutil.Process(p).memory_full_info().pss for p in corpus.query_pool().worker_pids()) >> 20


def main(out: str) -> None:
    if not os.path.exists(os.path.join(out, "manifest.json")):
        started = time.monotonic()
        ingest([sysconfig.get_paths()["stdlib"]], out, exclude=["site-packages/"])
        print(f"ingest {time.monotonic() - started:.1f} s")
    corpus = Corpus.open(out)
    print(corpus)
    ContextView(corpus).sql("SELECT 1 AS x")      # a warm worker
    print("workers PSS MB (warm, no scope)", workers_pss_mb(corpus))
    for scope in SCOPES:
        started = time.monotonic()
        view = ContextView(corpus, scope=scope)
        first = time.monotonic() - started
        started = time.monotonic()
        ContextView(corpus, scope=scope)
        again = time.monotonic() - started
        started = time.monotonic()
        hits = view.grep(r"raise ValueError", limit=None)
        grep_s = time.monotonic() - started
        info = view.sequence_info()
        print(f"scope {', '.join(scope)}: {info['documents']} docs {info['tokens']} tokens; "
              f"first {first:.2f}s, again {again:.3f}s, grep {grep_s:.2f}s ({len(hits)} hits); "
              f"workers PSS {workers_pss_mb(corpus)} MB")
    started = time.monotonic()
    hits = ContextView(corpus).grep(r"raise ValueError", limit=None)
    print(f"unscoped grep {time.monotonic() - started:.2f}s ({len(hits)} hits)")
    corpus.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/rlm-ray-stdlib-corpus")
