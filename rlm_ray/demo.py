"""`make demo`: the README's main job.

Ingest the CPython standard library of this interpreter (a real ~10M-token
codebase) into `.demo/corpus` (incremental on reruns), run a few corpus
queries, then answer questions of different families end to end with the RLM
engine (an RLMActor on a local Ray, the sandboxed REPL, sub-calls through the
gateway). Without RLM_MODEL the provider SIMULATOR answers (and says so); with
RLM_MODEL (+ RLM_SUB_MODEL, RLM_API_BASE and the provider's API key in the
environment) the same command uses the real model. Each stage is a helper
called from `main()`.
"""
from __future__ import annotations

import argparse
import sys
import sysconfig
import time

import rlm_ray  # noqa: F401  (process defaults)
from rlm_ray.errors import UserError

DEMO_CORPUS = ".demo/corpus"
DEMO_TRAJECTORIES = ".demo/trajectories"
SIM_BANNER = ("SIMULATOR is answering (no model configured): set RLM_MODEL and the provider's "
              "API key to use a real model")
# (question, max_depth): one per family, phrased as docs/architecture.md lists them.
DEMO_QUESTIONS = [
    ("Which module defines the function dedent?", 1),
    ("How many modules define a class whose name ends in 'Error'?", 1),
    ("Which classes inherit from StreamHandler?", 1),
    ("For each of the paths json/decoder.py, textwrap.py, shlex.py: how many functions take "
     "a parameter named self?", 2),
]
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


def answer_questions(corpus_uri: str, questions: list[tuple[str, int]]) -> None:
    import os
    import uuid
    from contextlib import ExitStack

    from rlm_ray.corpus import Corpus
    from rlm_ray.engine import RLM
    from rlm_ray.engine.commands import write_trajectory
    from rlm_ray.sim import SimServer

    with ExitStack() as stack:
        model, sub_model = os.environ.get("RLM_MODEL"), os.environ.get("RLM_SUB_MODEL")
        api_base = os.environ.get("RLM_API_BASE")
        if not model:
            print(f"\n{'=' * 78}\n{SIM_BANNER}\n{'=' * 78}")
            server = stack.enter_context(SimServer())
            model, sub_model, api_base = "openai/sim/rlm-policy", None, server.base_url
        else:
            print(f"\n== real model: {model} (sub-model {sub_model or model})")
        corpus = Corpus.open(corpus_uri)
        for question, depth in questions:
            rlm = RLM(model, sub_model, api_base=api_base, max_depth=depth, timeout_s=600)
            query_id = uuid.uuid4().hex[:12]
            print(f"\n== Q: {question}  (max_depth={depth})")
            result = rlm.answer(corpus, question, query_id=query_id)
            path = f"{DEMO_TRAJECTORIES}/{query_id}.json"
            write_trajectory(path, question, query_id, result)
            print(f"A: {result.answer}")
            print(f"   {result.summary()}")
            if result.error:
                print(f"   error: {result.error}")
            print(f"   trajectory: {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlm_ray.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=DEMO_CORPUS, help=f"where to build the corpus ({DEMO_CORPUS})")
    args = parser.parse_args(argv)
    try:
        ingest_stdlib(args.corpus)
        show_corpus_queries(args.corpus)
        answer_questions(args.corpus, DEMO_QUESTIONS)
    except UserError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
