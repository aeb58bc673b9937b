"""Per-query cost of the model's corpus calls (context.read / grep / sql), as
the REPL's host proxy serves them: median of warm runs on one corpus.

    python scripts/query_cost.py CORPUS [--repeats N]

Prints one line per call: median milliseconds. Run it before and after a
change of the query path to see what the change adds."""
from __future__ import annotations

import argparse
import statistics
import time

from rlm_ray.corpus import Corpus
from rlm_ray.engine.context_view import ContextView

REGEX = r"def\s+__\w+__\s*\("


def calls(view: ContextView, doc: str) -> dict:
    return {
        "doc slice (read 100 lines)": lambda: view.read(doc, 100, 200),
        "read whole doc": lambda: view.read(doc),
        "regex grep (limit 100)": lambda: view.grep(r"class \w+Error\(", limit=100),
        "regex scan (sql count)": lambda: view.sql(
            f"SELECT count(*) AS n FROM chunks WHERE regexp_matches(text, '(?i){REGEX}')"),
        "sql 1 row": lambda: view.sql("SELECT path FROM docs LIMIT 1"),
        "doc_texts (batch)": lambda: view.doc_texts(0, 50),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("corpus")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--doc", default="typing.py")
    args = parser.parse_args()
    view = ContextView(Corpus.open(args.corpus))
    for name, call in calls(view, args.doc).items():
        call()      # warm: connection, caches
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        print(f"{name:28s} {statistics.median(times) * 1000:8.1f} ms  "
              f"(min {min(times) * 1000:.1f})")


if __name__ == "__main__":
    main()
