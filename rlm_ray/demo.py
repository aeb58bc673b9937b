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
# A typed question grid: one template asked of each matching stdlib package, answers
# checked against a JSON Schema and landing as a typed `output` column.
DEMO_GRID = "[hjx]*/"          # html/, http/, json/, xml/, xmlrpc/
DEMO_TEMPLATE = {"query_id": "exceptions",
                 "question": "Which classes inherit from Exception?"}   # of each scope
DEMO_SCHEMA = {"type": "object", "required": ["defines", "count", "classes"],
               "properties": {"defines": {"type": "boolean"}, "count": {"type": "integer"},
                              "classes": {"type": "array", "items": {"type": "string"}}}}
DEMO_GRID_OUT = ".demo/grid"


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
    import uuid
    from contextlib import ExitStack

    from rlm_ray.corpus import Corpus
    from rlm_ray.engine import RLM
    from rlm_ray.engine.commands import write_trajectory

    with ExitStack() as stack:
        model, sub_model, api_base = _models(stack)
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
        answer_typed_grid(corpus_uri, model, sub_model, api_base)


def _models(stack) -> tuple[str, str | None, str | None]:
    """RLM_MODEL (a real provider), else an in-process SIMULATOR, with its banner."""
    import os

    from rlm_ray.sim import SimServer

    model, sub_model = os.environ.get("RLM_MODEL"), os.environ.get("RLM_SUB_MODEL")
    api_base = os.environ.get("RLM_API_BASE")
    if model:
        print(f"\n== real model: {model} (sub-model {sub_model or model})")
        return model, sub_model, api_base
    print(f"\n{'=' * 78}\n{SIM_BANNER}\n{'=' * 78}")
    server = stack.enter_context(SimServer())
    return "openai/sim/rlm-policy", None, server.base_url


def answer_typed_grid(corpus_uri: str, model: str, sub_model: str | None,
                      api_base: str | None) -> None:
    """One typed template x each package DEMO_GRID matches, through `rlm-ray run`'s
    batch path (resume, lineage tables), printed as a small table."""
    import json
    from pathlib import Path

    from rlm_ray.batch.runner import run
    from rlm_ray.batch.tables import read_run
    from rlm_ray.engine.output_schema import parse
    from rlm_ray.textsafe import terminal_safe

    import shutil

    out = Path(DEMO_GRID_OUT)
    shutil.rmtree(out, ignore_errors=True)   # a demo answers afresh (a real rerun resumes)
    out.mkdir(parents=True)
    queries = out / "templates.jsonl"
    queries.write_text(json.dumps(DEMO_TEMPLATE) + "\n")
    print(f"\n== typed grid: {DEMO_TEMPLATE['question']!r} x --for-each {DEMO_GRID!r}, "
          f"schema {json.dumps(DEMO_SCHEMA['properties'])}")
    rlm = {"model": model, "sub_model": sub_model, "api_base": api_base, "max_depth": 1,
           "timeout_s": 600, "output_schema": parse(DEMO_SCHEMA)}
    run(corpus_uri, str(queries), str(out / "results"), rlm=rlm, concurrency=4,
        progress=False, for_each=DEMO_GRID)
    answers = read_run(str(out / "results"), with_details=False).answers
    print(f"{'package':<10} {'status':<14} {'defines':<8} {'count':>5}  classes")
    for row in sorted(answers.to_pylist(), key=lambda r: r["query_id"]):
        output = row.get("output") or {}
        classes = ", ".join(output.get("classes") or [])
        print(terminal_safe(f"{(row['scope'] or ['?'])[0]:<10} {row['status']:<14} "
                            f"{str(output.get('defines', '')):<8} {output.get('count', ''):>5}  "
                            f"{classes[:60]}"))
    print(f"   tables: {out / 'results'} (answers.output is a struct: "
          f"SELECT scope, output.count FROM read_parquet('{out}/results/answers/*.parquet'))")


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
