"""`rlm-ray bench batch`: a batch of `define` questions over a codebase (the
CPython stdlib by default) against the provider SIMULATOR at a given RPM, and
the figures that say whether the batch machinery is the bottleneck:
questions/min, rate-limit utilisation (achieved requests/min over the RPM),
model calls, and the driver's peak memory."""
from __future__ import annotations

import resource
import sys
import sysconfig
import time
from pathlib import Path

from rlm_ray.batch.define_questions import (STDLIB_SKIP_DIRS, corpus_exclude, define_questions,
                                            write_jsonl)


def _peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux: the driver's high-water mark over the whole run.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_bench(*, questions: int, rpm: float, latency_ms: float, concurrency: int,
              source: str | None, workdir: str) -> int:
    from rlm_ray.batch.runner import run
    from rlm_ray.corpus import ingest
    from rlm_ray.llm.config import GatewayConfig
    from rlm_ray.sim import SimServer

    root = Path(source or sysconfig.get_paths()["stdlib"])
    work = Path(workdir)
    corpus = str(work / "corpus")
    t0 = time.monotonic()
    # The stdlib without its test suites and third-party site-packages (~3M
    # tokens); incremental: a second bench run rewrites nothing.
    ingest([str(root)], corpus, exclude=corpus_exclude(STDLIB_SKIP_DIRS))
    ingest_s = time.monotonic() - t0
    queries = write_jsonl(define_questions(root, questions, skip_dirs=STDLIB_SKIP_DIRS),
                          work / "queries.jsonl")
    out = str(work / f"results-{time.strftime('%Y%m%dT%H%M%S')}")
    print(f"bench batch: {questions} questions over {root} against the provider SIMULATOR "
          f"(rpm={rpm:g}, latency={latency_ms:g} ms)", file=sys.stderr)
    with SimServer(latency_ms=latency_ms, rpm=rpm) as server:
        # The client limiter paces at the provider's RPM; the cache is off so
        # every call is really made and counted.
        gateway = GatewayConfig(rpm=rpm, cache_mode="off", api_base=server.base_url)
        rlm = {"model": "openai/sim/rlm-policy", "api_base": server.base_url,
               "max_depth": 1, "max_iterations": 12, "gateway": gateway}
        started = time.monotonic()
        summary = run(corpus, str(queries), out, rlm=rlm, concurrency=concurrency,
                      progress=False)
        wall = time.monotonic() - started
        stats = server.stats()
    ok_requests = stats["by_status"].get(200, 0)
    achieved_rpm = ok_requests / (wall / 60)
    acc = summary.accuracy
    rows = [
        ("questions", f"{summary.total}"),
        ("terminal rows", f"{sum(summary.statuses.values())}"),
        ("statuses", ", ".join(f"{k}={v}" for k, v in sorted(summary.statuses.items()))),
        ("normalised accuracy", f"{acc.normalized}/{acc.scored}" if acc else "n/a"),
        ("wall (batch)", f"{wall:.1f} s"),
        ("questions/min", f"{summary.total / (wall / 60):.1f}"),
        ("model calls (200 OK at the sim)", f"{ok_requests}"),
        ("429 answers from the sim", f"{stats['by_status'].get(429, 0)}"),
        ("achieved requests/min", f"{achieved_rpm:.1f}"),
        ("provider RPM", f"{rpm:g}"),
        ("rate-limit utilisation", f"{achieved_rpm / rpm:.1%}"),
        ("sim max concurrency", f"{stats.get('max_concurrency')}"),
        ("driver peak RSS", f"{_peak_rss_mb():.0f} MB"),
        ("ingest (incremental)", f"{ingest_s:.1f} s"),
        ("results", out),
    ]
    width = max(len(k) for k, _ in rows)
    print("rlm-ray bench batch (provider SIMULATOR)")
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}")
    return 0
