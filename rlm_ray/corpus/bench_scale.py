"""Ingest scaling figures for `rlm-ray bench corpus`: wall and peak RSS of
ingesting the codebase once and N times (N copies under distinct prefixes),
in-process with one worker and as Ray tasks with several. Peak RSS is the
sum over this process and every descendant (Ray's daemons and workers
included), sampled while the ingest runs. Prints figures; asserts nothing."""
from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass

import psutil

from rlm_ray.corpus.ingest import ingest
from rlm_ray.corpus.parallel import start_ray

STDLIB_EXCLUDE = ["site-packages/", "__pycache__/", "*.pyc"]
SAMPLE_S = 0.2


class PeakRSS:
    """Samples the RSS of this process plus all its descendants in a thread."""

    def __init__(self) -> None:
        self.tree = 0
        self.driver = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        total = driver = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass   # a worker that just exited
        self.tree = max(self.tree, total)
        self.driver = max(self.driver, driver)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(SAMPLE_S)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


@dataclass
class ScaleRun:
    label: str
    workers: int
    wall: float
    tokens: int
    documents: int
    peak_tree: int
    peak_driver: int


def _one(label: str, sources: list[str], out: str, workers: int) -> ScaleRun:
    shutil.rmtree(out, ignore_errors=True)    # a full ingest, not an incremental no-op
    with PeakRSS() as peak:
        started = time.perf_counter()
        manifest = ingest(sources, out, exclude=STDLIB_EXCLUDE, name=label, parallelism=workers)
        wall = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    return ScaleRun(label, workers, wall, manifest["tokens"], manifest["documents"], peak.tree, peak.driver)


def run_scale(console, stdlib: str, work: str, copies: int, workers: int) -> list[ScaleRun]:
    import ray
    from rich.table import Table

    loads = [os.getloadavg()]
    runs = []
    console.print(f"ingest scaling: {copies}x {stdlib} with 1 worker (in-process) ...")
    runs.append(_one(f"{copies}x", [stdlib] * copies, os.path.join(work, "scale"), 1))
    loads.append(os.getloadavg())
    # One Ray instance for both multi-worker runs, so they pay the same overhead.
    start_ray(workers)
    try:
        for n in (1, copies):
            console.print(f"ingest scaling: {n}x with {workers} Ray workers ...")
            runs.append(_one(f"{n}x", [stdlib] * n, os.path.join(work, "scale"), workers))
            loads.append(os.getloadavg())
    finally:
        ray.shutdown()

    table = Table(title=f"ingest scaling ({os.cpu_count()} CPUs)")
    for column in ("corpus", "workers", "documents", "tokens", "wall", "M tok/s",
                   "peak RSS (tree)", "peak RSS (driver)"):
        table.add_column(column, justify="left" if column == "corpus" else "right")
    for run in runs:
        table.add_row(run.label, str(run.workers), f"{run.documents:,}", f"{run.tokens:,}",
                      f"{run.wall:.1f} s", f"{run.tokens / run.wall / 1e6:.2f}",
                      f"{run.peak_tree / 2**20:,.0f} MB", f"{run.peak_driver / 2**20:,.0f} MB")
    console.print(table)
    one, small, big = runs
    console.print(f"{copies}x speed-up with {workers} workers vs 1: {one.wall / big.wall:.2f}x; "
                  f"peak RSS {copies}x - 1x (both {workers} workers): "
                  f"{(big.peak_tree - small.peak_tree) / 2**20:+,.0f} MB")
    console.print("load average (1/5/15 min) before and after each run: "
                  + "; ".join("/".join(f"{x:.1f}" for x in load) for load in loads))
    return runs
