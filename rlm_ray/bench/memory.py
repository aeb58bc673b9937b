"""The one memory metric of every benchmark: PSS (proportional set size).

RSS counts a shared page once per process that maps it, so summing RSS over a
batch's processes (Ray actors importing the same libraries, sandbox workers
forked from one image) counts shared libraries many times over; USS drops
shared pages altogether, so it undercounts what the batch costs the machine.
PSS charges each shared page 1/N to each of its N processes: summed over a
set of processes it is what they hold together. Reading it costs a walk of
/proc/PID/smaps_rollup, cheap at one sample a second (or a few per second
for a handful of processes)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

MB = 2**20


def pss_bytes(proc) -> int:
    """PSS of one psutil.Process in bytes (raises psutil.Error if it is gone)."""
    return proc.memory_full_info().pss


@dataclass(frozen=True)
class TreePss:
    roots_mb: float          # the given processes themselves
    descendants_mb: float    # every process under them (workers, sandboxes, bwrap)
    processes: int

    @property
    def total_mb(self) -> float:
        return self.roots_mb + self.descendants_mb


def tree_pss(pids: Iterable[int]) -> TreePss:
    """PSS of `pids` and all their descendants, each process counted once;
    processes that exit while being read are skipped."""
    import psutil

    seen: set[int] = set()
    totals = [0, 0]
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for proc in procs:
            if proc.pid in seen:
                continue
            try:
                totals[proc.pid != pid] += pss_bytes(proc)
                seen.add(proc.pid)
            except psutil.Error:
                continue
    return TreePss(totals[0] / MB, totals[1] / MB, len(seen))


@dataclass
class MemoryPeak:
    """The highest summed PSS seen over a run's samples, and how many
    questions were in flight AT THAT SAMPLE: memory per question in flight is
    the one divided by the other (dividing by the run's most questions in
    flight, reached at another moment, would mix two samples)."""
    pss_mb: float = 0.0              # highest sum of PSS over the sampled processes
    in_flight_at_peak: int = 0       # questions in flight when the PSS peaked
    processes_at_peak: int = 0
    roots_mb_at_peak: float = 0.0
    descendants_mb_at_peak: float = 0.0
    max_in_flight: int = 0           # most questions in flight at any sample
    samples: int = 0

    def observe(self, tree: TreePss, in_flight: int) -> None:
        self.samples += 1
        self.max_in_flight = max(self.max_in_flight, in_flight)
        if tree.total_mb > self.pss_mb:
            self.pss_mb, self.in_flight_at_peak = tree.total_mb, in_flight
            self.processes_at_peak = tree.processes
            self.roots_mb_at_peak = tree.roots_mb
            self.descendants_mb_at_peak = tree.descendants_mb

    @property
    def per_question_mb(self) -> float | None:
        """PSS at the peak / questions in flight at the peak; None when no
        question was in flight then (a peak while hosts idle is not a cost
        per question)."""
        if not self.in_flight_at_peak:
            return None
        return self.pss_mb / self.in_flight_at_peak
