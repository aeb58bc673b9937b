"""`rlm-ray bench batch`: batches of `define` questions over a codebase (the
CPython stdlib by default) against the provider SIMULATOR, once per
concurrency level, and the figures that say whether the batch machinery is
the bottleneck: questions/min, rate-limit utilisation, the simulator's peak
concurrent requests, and memory per question in flight: the peak of the PSS
(rlm_ray.bench.memory) summed over every process the batch started (RLM host
actors, their sandbox workers, gateway/limiter/budget actors), divided by the
questions in flight at that same sample; CPU per question: user+system of
every process the batch ran on (bench.cpu: driver, Ray, hosts, query
workers, gateway actors, sandboxes), simulator excluded, over the questions;
and the batch's wall (hosts warm) against its latency floor (bench.floor).
Each level runs 3 waves of questions (3 x the concurrency unless --questions
says otherwise) on hosts started once, so the first wave's wall per question
against the second's (both at full concurrency; the third drains the queue)
shows whether start-up is paid once or per question."""
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
from rlm_ray.bench.cpu import DRIVER, SANDBOXES, BatchCpu, thread_cpu_s
from rlm_ray.bench.floor import batch_floor
from rlm_ray.bench.memory import MemoryPeak, tree_pss

SAMPLE_S = 1.0
SAMPLER_SHARE = 0.05   # the sampler may take this much of one core: slower samples past it


class BatchSampler:
    """Samples, every SAMPLE_S or slower (a walk of thousands of processes
    costs real CPU, and it must not slow the batch it measures): the PSS of
    this job's Ray actors and all their descendants (sandbox workers, bwrap,
    query workers), the questions the hosts report in flight, and the CPU of
    the driver's whole process tree (bench.cpu). The simulator's thread and
    this sampler's are in the driver process but are not the batch: their CPU
    is measured and taken out."""

    def __init__(self, hosts, sim_thread_id: int | None) -> None:
        self.hosts = hosts
        self.peak = MemoryPeak()
        self.cpu = BatchCpu()
        self.driver_pss_mb = 0.0   # this process (the batch driver), its own peak
        self.sandbox_cpu_s = 0.0   # of the sandbox workers the hosts ended meanwhile
        self.sampler_cpu_s = 0.0   # this sampler's thread
        self._sim_thread = sim_thread_id
        self._sim_cpu_at_start = 0.0
        self._sandboxes_at_start = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)

    def __enter__(self) -> "BatchSampler":
        self._sandboxes_at_start = self._sandbox_cpu_s()
        self.cpu.start()
        self._sim_cpu_at_start = thread_cpu_s(self._sim_thread)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        self.cpu.sample()   # the last figures, before the hosts are shut down
        self.sandbox_cpu_s = self._sandbox_cpu_s() - self._sandboxes_at_start

    def _sandbox_cpu_s(self) -> float:
        import ray

        return sum(ray.get([h.actor.sandbox_cpu_s.remote() for h in self.hosts.hosts], timeout=120))

    def _loop(self) -> None:
        interval = SAMPLE_S
        while not self._stop.wait(interval):
            before = self.sampler_cpu_s
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 - a missed sample is not a failed bench
                print(f"bench batch: sample failed: {exc}", file=sys.stderr)
            self.sampler_cpu_s = thread_cpu_s(threading.get_native_id())
            interval = max(SAMPLE_S, (self.sampler_cpu_s - before) / SAMPLER_SHARE)
        self.sampler_cpu_s = thread_cpu_s(threading.get_native_id())

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
        self.cpu.sample()

    def sim_cpu_s(self) -> float:
        return thread_cpu_s(self._sim_thread) - self._sim_cpu_at_start

    def batch_cpu(self) -> tuple[float, dict[str, float]]:
        """(CPU seconds of the batch, the same by kind of process), the
        simulator's and this sampler's threads taken out of the driver's."""
        outside = self.sim_cpu_s() + self.sampler_cpu_s
        kinds = self.cpu.by_kind()
        kinds[DRIVER] = kinds.get(DRIVER, 0.0) - outside
        kinds[SANDBOXES] = self.sandbox_cpu_s
        return self.cpu.total_s - outside + self.sandbox_cpu_s, kinds


def _job_actor_pids() -> list[int]:
    import ray
    from ray._private.state import actors

    job = ray.get_runtime_context().get_job_id()
    return [a["Pid"] for a in actors(actor_state_name="ALIVE").values()
            if a.get("Pid") and a.get("JobID") == job]


def _cluster_cores() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU") or os.cpu_count() or 1)


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
            rows = _one_level(root, corpus, work, server, rpm, latency_ms, level, count)
            width = max(len(k) for k, _ in rows)
            print(f"\n  concurrency {level} ({count} questions)")
            for label, value in rows:
                print(f"    {label.ljust(width)}  {value}")
    print(f"\n  ingest (incremental)  {ingest_s:.1f} s")
    print(f"  load average          {Path('/proc/loadavg').read_text().split()[:3]}")
    return 0


def _one_level(root: Path, corpus: str, work: Path, server, rpm: float, latency_ms: float,
               level: int, count: int) -> list[tuple[str, str]]:
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
        with BatchSampler(hosts, server.thread_id) as sampler:
            run_started = time.monotonic()
            summary = run(corpus, str(queries), out, rlm=rlm, concurrency=level,
                          progress=False, hosts=hosts)
            batch_wall = time.monotonic() - run_started
    finally:
        hosts.shutdown()
    wall = time.monotonic() - started
    stats = server.stats()
    tables = read_run(out, with_details=True)
    answers = tables.answers.to_pylist()
    first, second = _waves(answers, level)
    floor, longest = batch_floor(tables.calls.select(["query_id", "kind"]).to_pylist(),
                                 latency_ms / 1000, level)
    cpu_s, cpu_kinds = sampler.batch_cpu()
    cores = _cluster_cores()
    per_question = 1 / max(1, len(answers))
    peak = sampler.peak
    ok_requests = stats["by_status"].get(200, 0)
    achieved_rpm = ok_requests / (wall / 60)
    acc = summary.accuracy
    pss_per_question = peak.per_question_mb
    attributed = sum(cpu_kinds.values())
    kinds = [(f"  {kind}", f"{seconds * per_question:.3f} s ({seconds:.0f} s in all)")
             for kind, seconds in sorted(cpu_kinds.items(), key=lambda kv: -kv[1])]
    kinds.append(("  ended between samples (not split)",
                  f"{(cpu_s - attributed) * per_question:.3f} s"))
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
         "n/a (no question in flight at the peak)" if pss_per_question is None
         else f"{pss_per_question:.1f} MB"),
        ("CPU per question, all batch processes", f"{cpu_s * per_question:.3f} s (user+system, "
                                                   f"{cpu_s:.0f} s over {len(answers)} questions; "
                                                   f"{sampler.cpu.samples} samples)"),
        *kinds,
        ("simulator CPU (not counted above)", f"{sampler.sim_cpu_s():.1f} s"),
        ("wall per question, wave 1", f"{first:.1f} s"),
        ("wall per question, wave 2", f"{second:.1f} s"),
        ("wave 1 / wave 2", f"{first / second:.2f}x"),
        ("latency floor", f"{floor:.1f} s (longest question {longest:.0f} s: its root turns "
                          f"and sub-call waves x {latency_ms / 1000:g} s)"),
        ("wall (batch, hosts warm)", f"{batch_wall:.1f} s = {batch_wall / floor:.2f}x the floor"
         if floor else f"{batch_wall:.1f} s"),
        ("CPU floor (batch CPU / cores)", f"{cpu_s / cores:.1f} s over {cores:g} cores: no "
                                          f"schedule of this CPU finishes sooner"),
        ("wall (with host start-up)", f"{wall:.1f} s"),
        ("driver peak PSS", f"{sampler.driver_pss_mb:.0f} MB"),
        ("questions/min", f"{summary.total / (wall / 60):.1f}"),
        ("model calls (200 OK at the sim)", f"{ok_requests}"),
        ("429 answers from the sim", f"{stats['by_status'].get(429, 0)}"),
        ("rate-limit utilisation", f"{achieved_rpm / rpm:.1%} ({achieved_rpm:.0f} of {rpm:g} rpm)"),
        ("results", out),
    ]
