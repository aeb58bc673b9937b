"""Where bucket builds run: in this process (small corpora, `--parallelism 1`),
in local worker processes (one machine, no cluster running), or as Ray tasks
across a running cluster's cores and nodes.

On a cluster, Ray tasks rather than Ray Data: a bucket is already the unit of work (its
documents must meet in one shard writer, and its content key decides whether
to build it at all), results are a few KB of metadata per bucket, and tasks
need no extra dependency or block-size tuning. Memory stays flat because at
most `2 x workers` tasks are in flight, each holding one group of buckets.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass

from rlm_ray.corpus.shards import BucketJob, BucketResult, build_bucket, build_buckets
from rlm_ray.errors import UserError

# Without a running Ray cluster, corpora below this go to driver threads: spawning
# workers (imports, tokenizer tables) costs more than it saves (the stdlib is ~60 MB).
SMALL_CORPUS_BYTES = 256 << 20
TASK_BYTES = 4 << 20          # source bytes per Ray task: amortises task overhead
IN_FLIGHT_PER_WORKER = 2
IO_THREADS = 4                # default in-process: overlap file / S3 reads


@dataclass(frozen=True)
class Plan:
    workers: int       # bucket builds at once (0 on Ray: the cluster's CPUs)
    backend: str       # "inline" | "threads" | "processes" | "ray"

    @property
    def label(self) -> str:
        return f"{self.backend}:{self.workers or 'cluster'}"


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray and ray.is_initialized())


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


BACKENDS = ("inline", "threads", "processes", "ray")


def make_plan(parallelism: int | None, total_bytes: int, backend: str | None = None) -> Plan:
    """`backend` forces where builds run (e.g. 1 worker PROCESS, so a benchmark
    compares 1 and N workers of one backend); None chooses as documented above."""
    if backend is not None:
        if backend not in BACKENDS:
            raise UserError(f"unknown ingest backend {backend!r} (known: {', '.join(BACKENDS)})")
        if parallelism is not None and parallelism < 1:
            raise UserError(f"--parallelism must be at least 1, got {parallelism}")
        if backend == "inline":
            return Plan(1, "inline")
        return Plan(parallelism or os.cpu_count() or 1, backend)
    cluster = _ray_running() or bool(os.environ.get("RAY_ADDRESS"))
    if parallelism is not None:
        if parallelism < 1:
            raise UserError(f"--parallelism must be at least 1, got {parallelism}")
        if parallelism == 1:
            return Plan(1, "inline")
        # No cluster: plain worker processes start in a second; a private Ray takes
        # 10-60 s (and can miss its own start-up window on a loaded machine).
        return Plan(parallelism, "ray" if cluster else "processes")
    if cluster:
        return Plan(0, "ray")
    if total_bytes < SMALL_CORPUS_BYTES:
        return Plan(IO_THREADS, "threads")
    return Plan(os.cpu_count() or 1, "processes")


def run(jobs: list[BucketJob], out: str, chunk_tokens: int, plan: Plan) -> Iterator[BucketResult]:
    """Yield one result per job, in completion order."""
    if plan.backend == "ray":
        yield from _on_ray(jobs, out, chunk_tokens, plan.workers)
    elif plan.backend == "processes":
        yield from _in_processes(jobs, out, chunk_tokens, plan.workers)
    else:
        yield from _in_process(jobs, out, chunk_tokens, plan.workers)


def _in_process(jobs: list[BucketJob], out: str, chunk_tokens: int, workers: int) -> Iterator[BucketResult]:
    if workers == 1:   # one core, one thread: the baseline the benchmark compares against
        for job in jobs:
            yield build_bucket(job, out, chunk_tokens, threads=1)
        return
    pending: set = set()
    todo = iter(jobs)
    with ThreadPoolExecutor(workers) as pool:
        while True:
            while len(pending) < workers * IN_FLIGHT_PER_WORKER and (job := next(todo, None)):
                pending.add(pool.submit(build_bucket, job, out, chunk_tokens, 1))
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()


def _in_processes(jobs: list[BucketJob], out: str, chunk_tokens: int, workers: int) -> Iterator[BucketResult]:
    # "spawn": the driver has pyarrow / tokenizer threads, which fork would copy mid-state.
    context = multiprocessing.get_context("spawn")
    groups = iter(group_jobs(jobs, workers))
    pending: set = set()
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        try:
            while True:
                while len(pending) < workers * IN_FLIGHT_PER_WORKER and (group := next(groups, None)):
                    pending.add(pool.submit(build_buckets, group, out, chunk_tokens))
                if not pending:
                    return
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield from _result(future)
        finally:
            for future in pending:
                future.cancel()


def _result(future) -> list[BucketResult]:
    try:
        return future.result()
    except UserError:
        raise
    except Exception as exc:  # a worker died (BrokenProcessPool) or hit a bug
        raise UserError(f"ingest worker failed: {type(exc).__name__}: {exc}") from None


def group_jobs(jobs: list[BucketJob], workers: int) -> list[list[BucketJob]]:
    """Groups of about TASK_BYTES (smaller when the corpus is small, so every
    worker gets several); spooled and remote-readable jobs never share a group."""
    total = sum(j.size for j in jobs)
    target = max(1, min(TASK_BYTES, total // (workers * 4) or 1))
    groups: list[list[BucketJob]] = []
    for local_only in (False, True):
        group: list[BucketJob] = []
        size = 0
        for job in (j for j in jobs if j.local_only == local_only):
            group.append(job)
            size += job.size
            if size >= target:
                groups.append(group)
                group, size = [], 0
        if group:
            groups.append(group)
    return groups


def _on_ray(jobs: list[BucketJob], out: str, chunk_tokens: int, workers: int) -> Iterator[BucketResult]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    started = not ray.is_initialized()
    if started:
        start_ray(workers)
    try:
        workers = workers or cluster_cpus()
        build = ray.remote(num_cpus=1, max_retries=1)(build_buckets)
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        groups = iter(group_jobs(jobs, workers))
        pending: list = []
        try:
            while True:
                while len(pending) < workers * IN_FLIGHT_PER_WORKER and (group := next(groups, None)):
                    options = {"scheduling_strategy": here} if group[0].local_only else {}
                    pending.append(build.options(**options).remote(group, out, chunk_tokens))
                if not pending:
                    return
                done, pending = ray.wait(pending, num_returns=1)
                yield from _get(ray, done[0])
        finally:
            for ref in pending:   # a failure: stop the rest writing shards nobody will use
                ray.cancel(ref, force=True)
    finally:
        if started:
            ray.shutdown()


def start_ray(workers: int, attempts: int = 3) -> None:
    """Join the cluster named by RAY_ADDRESS, or start a private local Ray
    ("local": never attach to another user's `ray start` by accident). Ray
    gives its raylet 30 s to register, which a loaded machine can miss: retry."""
    import ray

    kwargs = {} if os.environ.get("RAY_ADDRESS") else {"address": "local", "num_cpus": workers or None}
    for attempt in range(attempts):
        try:
            ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False, **kwargs)
            return
        except Exception as exc:  # Ray raises a bare Exception for the start-up timeout
            ray.shutdown()
            if attempt == attempts - 1 or "timed out during startup" not in str(exc):
                raise UserError(f"cannot start Ray for a parallel ingest: {exc}") from None


def _get(ray, ref) -> list[BucketResult]:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, UserError):
            raise UserError(str(cause)) from None
        raise UserError(f"ingest worker failed: {type(cause).__name__}: {cause}") from None
