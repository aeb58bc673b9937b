"""`make demo`: the README's main job.

For now: ingest the CPython standard library of this interpreter (a real
~10M-token codebase) into `.demo/corpus` (incremental on reruns) and run a
few corpus queries. Later stages add answering questions with the RLM engine;
each stage is a helper called from `main()`.
"""
from __future__ import annotations

import argparse
import sys
import sysconfig
import time

import rlm_ray  # noqa: F401  (process defaults)
from rlm_ray.errors import UserError

DEMO_CORPUS = ".demo/corpus"
STDLIB_EXCLUDE = ["site-packages/", "__pycache__/", "*.pyc"]


def ingest_stdlib(out: str) -> dict:
    from rlm_ray.corpus import ingest
    from rlm_ray.corpus.commands import summary_line

    stdlib = sysconfig.get_paths()["stdlib"]
    print(f"== ingest {stdlib} -> {out}")
    manifest = ingest([stdlib], out, exclude=STDLIB_EXCLUDE, name="cpython-stdlib")
    print(summary_line(manifest, out))
    return manifest


def show_corpus_queries(out: str) -> None:
    from rlm_ray.corpus import Corpus

    corpus = Corpus.open(out)
    stats = corpus.stats
    print(f"\n== Corpus.open({out!r})")
    print(f"{stats['documents']:,} documents, {stats['chunks']:,} chunks, {len(corpus):,} tokens "
          f"({stats['tokenizer']}), {stats['shards']} shards")

    t = time.perf_counter()
    matches = corpus.grep(r"class \w+Error\(", limit=5)
    print(f"\n== grep(r'class \\w+Error\\(', limit=5)  [{(time.perf_counter() - t) * 1000:.0f} ms]")
    for m in matches:
        print(f"{m['path']}:{m['line']}: {m['text']}")

    t = time.perf_counter()
    text = corpus.read("json/__init__.py", 0, 6)
    print(f"\n== read('json/__init__.py', 0, 6)  [{(time.perf_counter() - t) * 1000:.0f} ms]")
    print(text, end="" if text.endswith("\n") else "\n")

    query = ("SELECT count(DISTINCT path) AS modules FROM chunks "
             "WHERE path LIKE '%.py' AND regexp_matches(text, '(?m)^\\s*async def ')")
    t = time.perf_counter()
    modules = corpus.sql(query).to_pylist()[0]["modules"]
    print(f"\n== sql: modules with an `async def`  [{(time.perf_counter() - t) * 1000:.0f} ms]")
    print(f"{query}\n-> {modules}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlm_ray.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=DEMO_CORPUS, help=f"where to build the corpus ({DEMO_CORPUS})")
    args = parser.parse_args(argv)
    try:
        ingest_stdlib(args.corpus)
        show_corpus_queries(args.corpus)
    except UserError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
