"""`rlm-ray bench batch`: batches of `define` questions over a codebase (the
CPython stdlib by default) against the provider SIMULATOR, once per
concurrency level, and the figures that say whether the batch machinery is
the bottleneck: questions/min, rate-limit utilisation, the simulator's peak
concurrent requests, and memory per question in flight: the peak of the PSS
(rlm_ray.bench.memory) summed over every process the batch started (RLM host
actors, their sandbox workers, gateway/limiter/budget actors), divided by the
questions in flight at that same sample. Each level runs 3 waves of questions
(3 x the concurrency unless --questions says otherwise) on hosts started
once, so the first wave's wall per question against the second's (both at
full concurrency; the third drains the queue) shows whether start-up is paid
once or per question."""
from __future__ import annotations

import os
import statistics
import sys
import sysconfig
import threading
import time
from pathlib import Path

from rlm_ray.batch.define_questions import (STDLIB_SKIP_DIRS, corpus_exclude, define_questions,
                                            write_jsonl)
from rlm_ray.bench.memory import MemoryPeak, tree_pss

SAMPLE_S = 1.0


class MemorySampler:
    """Samples, every SAMPLE_S, the PSS of this job's Ray actors and all their
    descendants (sandbox workers, bwrap), and the questions the hosts report
    in flight."""

    def __init__(self, hosts) -> None:
        self.hosts = hosts
        self.peak = MemoryPeak()
        self.driver_pss_mb = 0.0   # this process (the batch driver), its own peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-memory", daemon=True)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 - a missed sample is not a failed bench
                print(f"bench batch: memory sample failed: {exc}", file=sys.stderr)

    def sample(self) -> None:
        import ray

        in_flight = 0
        for ref in [h.actor.in_flight.remote() for h in self.hosts.hosts]:
            try:
                in_flight += ray.get(ref, timeout=10)
            except Exception:  # noqa: BLE001 - a host being replaced
                continue
        self.peak.observe(tree_pss(_job_actor_pids()), in_flight)
        self.driver_pss_mb = max(self.driver_pss_mb, tree_pss([os.getpid()]).roots_mb)


def _job_actor_pids() -> list[int]:
    import ray
    from ray._private.state import actors

    job = ray.get_runtime_context().get_job_id()
    return [a["Pid"] for a in actors(actor_state_name="ALIVE").values()
            if a.get("Pid") and a.get("JobID") == job]


def _waves(answers: list[dict], concurrency: int) -> tuple[float, float]:
    """Mean wall per question (driver start to finish) of the first and second
    `concurrency` questions started."""
    ordered = sorted(answers, key=lambda a: a["started_at"])
    walls = [(a["finished_at"] - a["started_at"]).total_seconds() for a in ordered]
    first, second = walls[:concurrency], walls[concurrency:2 * concurrency]
    mean = statistics.fmean
    return (mean(first) if first else float("nan"), mean(second) if second else float("nan"))


def run_bench(*, questions: int | None, rpm: float, latency_ms: float,
              concurrency: list[int], source: str | None, workdir: str) -> int:
    from rlm_ray._ray import describe_target
    from rlm_ray.corpus import ingest
    from rlm_ray.sim import SimServer

    print(f"bench batch: {describe_target()}", file=sys.stderr, flush=True)
    root = Path(source or sysconfig.get_paths()["stdlib"])
    work = Path(workdir)
    corpus = str(work / "corpus")
    t0 = time.monotonic()
    # The stdlib without its test suites and third-party site-packages (~3M
    # tokens); incremental: a second bench run rewrites nothing.
    ingest([str(root)], corpus, exclude=corpus_exclude(STDLIB_SKIP_DIRS))
    ingest_s = time.monotonic() - t0
    print(f"bench batch: define questions over {root} against the provider SIMULATOR "
          f"(rpm={rpm:g}, latency={latency_ms:g} ms), concurrency {concurrency}",
          file=sys.stderr)
    print("rlm-ray bench batch (provider SIMULATOR)")
    with SimServer(latency_ms=latency_ms, rpm=rpm) as server:
        for level in concurrency:
            server.reset_stats()
            count = questions or 3 * level
            rows = _one_level(root, corpus, work, server, rpm, level, count)
            width = max(len(k) for k, _ in rows)
            print(f"\n  concurrency {level} ({count} questions)")
            for label, value in rows:
                print(f"    {label.ljust(width)}  {value}")
    print(f"\n  ingest (incremental)  {ingest_s:.1f} s")
    print(f"  load average          {Path('/proc/loadavg').read_text().split()[:3]}")
    return 0


def _one_level(root: Path, corpus: str, work: Path, server, rpm: float, level: int,
               count: int) -> list[tuple[str, str]]:
    from rlm_ray.batch.pool import HostPool
    from rlm_ray.batch.runner import run
    from rlm_ray.batch.tables import read_run
    from rlm_ray.llm.config import GatewayConfig

    queries = write_jsonl(define_questions(root, count, seed=level, skip_dirs=STDLIB_SKIP_DIRS),
                          work / f"queries-c{level}.jsonl")
    out = str(work / f"results-c{level}-{time.strftime('%Y%m%dT%H%M%S')}")
    # The client limiter paces at the provider's RPM; the cache is off so
    # every call is really made and counted.
    gateway = GatewayConfig(rpm=rpm, cache_mode="off", api_base=server.base_url)
    rlm = {"model": "openai/sim/rlm-policy", "api_base": server.base_url,
           "max_depth": 1, "max_iterations": 12, "gateway": gateway}
    started = time.monotonic()
    hosts = HostPool(concurrency=level)
    from rlm_ray.corpus import Corpus

    hosts.warm(Corpus.open(corpus), rlm)   # started once, before the first wave
    host_start = time.monotonic() - started
    try:
        with MemorySampler(hosts) as sampler:
            summary = run(corpus, str(queries), out, rlm=rlm, concurrency=level,
                          progress=False, hosts=hosts)
    finally:
        hosts.shutdown()
    wall = time.monotonic() - started
    stats = server.stats()
    answers = read_run(out, with_details=False).answers.to_pylist()
    first, second = _waves(answers, level)
    peak = sampler.peak
    ok_requests = stats["by_status"].get(200, 0)
    achieved_rpm = ok_requests / (wall / 60)
    acc = summary.accuracy
    per_question = peak.per_question_mb
    return [
        ("terminal rows", f"{sum(summary.statuses.values())}"),
        ("statuses", ", ".join(f"{k}={v}" for k, v in sorted(summary.statuses.items()))),
        ("normalised accuracy", f"{acc.normalized}/{acc.scored}" if acc else "n/a"),
        ("RLM host actors", f"{hosts.size} (started in {host_start:.1f} s)"),
        ("questions in flight (most)", f"{peak.max_in_flight} "
                                       f"(driver saw {summary.peak_in_flight})"),
        ("sim max concurrency", f"{stats.get('max_concurrency')}"),
        ("peak PSS, all batch processes", f"{peak.pss_mb:.0f} MB over {peak.processes_at_peak} "
                                          f"processes ({peak.in_flight_at_peak} in flight then; "
                                          f"{peak.samples} samples)"),
        ("  of which Ray actors / sandboxes", f"{peak.roots_mb_at_peak:.0f} MB / "
                                             f"{peak.descendants_mb_at_peak:.0f} MB"),
        ("PSS per question in flight (at the peak)",
         "n/a (no question in flight at the peak)" if per_question is None
         else f"{per_question:.1f} MB"),
        ("wall per question, wave 1", f"{first:.1f} s"),
        ("wall per question, wave 2", f"{second:.1f} s"),
        ("wave 1 / wave 2", f"{first / second:.2f}x"),
        ("wall (batch)", f"{wall:.1f} s"),
        ("driver peak PSS", f"{sampler.driver_pss_mb:.0f} MB"),
        ("questions/min", f"{summary.total / (wall / 60):.1f}"),
        ("model calls (200 OK at the sim)", f"{ok_requests}"),
        ("429 answers from the sim", f"{stats['by_status'].get(429, 0)}"),
        ("rate-limit utilisation", f"{achieved_rpm / rpm:.1%} ({achieved_rpm:.0f} of {rpm:g} rpm)"),
        ("results", out),
    ]
