"""The one CPU metric of the batch benchmarks: user+system seconds of every
process a batch runs on, each counted once, including processes that ended
between two samples.

A process that exits takes its counters with it, so summing the live
processes at the end misses every sandbox that came and went. Linux adds a
process's CPU (and that of the children it reaped) to its parent's
"children" counters when the parent reaps it, so a tree's total is, at any
moment: over its live processes, their own CPU plus their reaped children's.
A process that vanished between two samples is then counted through its
parent; only the ROOT (whose parent is outside the tree) must not vanish,
and a batch's root is the driver itself.

The split by kind of process (`by_kind`) is the last own-CPU seen of each
process, so a process's final second (and a process that lived less than a
sample) is missing there; the remainder is printed as such, never spread."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

SANDBOXES = "sandboxes (bwrap + worker)"
SIMULATOR = "provider SIMULATOR (not rlm-ray)"
# What each process of a batch is, from its name and command line (the first
# match wins; a sandbox's descendants are the sandbox's).
_KIND_MARKERS = (
    ("host actors", ("ray::RLMActor",)),
    ("query workers", ("rlm_ray.corpus.query_worker",)),
    ("gateway, limiter and budget actors", ("ray::GatewayActor", "ray::LimiterActor",
                                            "ray::BudgetBank")),
    (SANDBOXES, ("bwrap", "sandbox.worker", "sandbox.zygote")),
    (SIMULATOR, ("rlm_ray.sim",)),   # a child-process simulator shares the cores, not the work
)
RAY_SYSTEM = "Ray itself (raylet, GCS, idle workers, agents)"
DRIVER = "driver"


def kind_of(proc, parent_kind: str | None, driver_pid: int) -> str:
    if proc.pid == driver_pid:
        return DRIVER
    try:
        text = " ".join([proc.name(), *proc.cmdline()[:6]])   # python -I -S -B -c <code>
    except Exception:  # noqa: BLE001 - psutil.Error, or a process gone mid-read
        text = ""
    for kind, markers in _KIND_MARKERS:
        if any(m in text for m in markers):
            return kind
    if parent_kind == SANDBOXES:
        return parent_kind
    return RAY_SYSTEM


@dataclass
class BatchCpu:
    """CPU of the driver's process tree from `start()` on: the driver, Ray's
    own processes (a local instance is the driver's child), the host actors
    and everything under them except sandbox workers. Those are SIGKILLed
    with their bwrap, never reaped, so no tree keeps their CPU: the hosts
    read it before each kill (sandbox.process.ended_workers_cpu_s) and the
    bench adds it."""
    driver_pid: int = field(default_factory=os.getpid)
    _procs: dict[int, tuple] = field(default_factory=dict)     # pid -> (psutil.Process, kind)
    _alive: dict[int, float] = field(default_factory=dict)     # pid -> own + reaped children
    _own: dict[int, float] = field(default_factory=dict)       # pid -> own, last seen
    _baseline: dict[int, tuple[float, float]] = field(default_factory=dict)
    samples: int = 0

    def start(self) -> None:
        self.sample()
        self._baseline = {pid: (self._alive[pid], self._own.get(pid, 0.0)) for pid in self._alive}

    def sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.driver_pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        alive: dict[int, float] = {}
        for proc in tree:
            known = self._procs.get(proc.pid)
            if known is None or known[0] != proc:     # new, or a reused pid
                try:
                    parent = self._procs.get(proc.ppid())
                except psutil.Error:
                    continue
                known = (proc, kind_of(proc, parent[1] if parent else None, self.driver_pid))
                self._procs[proc.pid] = known
                self._own.pop(proc.pid, None)
            if known[1] == SANDBOXES:
                continue
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            own = t.user + t.system
            alive[proc.pid] = own + t.children_user + t.children_system
            self._own[proc.pid] = own
        self._alive = alive
        self.samples += 1

    @property
    def total_s(self) -> float:
        return sum(v - self._baseline.get(pid, (0.0, 0.0))[0] for pid, v in self._alive.items())

    def by_kind(self) -> dict[str, float]:
        kinds: dict[str, float] = {}
        for pid, own in self._own.items():
            kind = self._procs[pid][1]
            kinds[kind] = kinds.get(kind, 0.0) + own - self._baseline.get(pid, (0.0, 0.0))[1]
        return kinds


def thread_cpu_s(native_id: int | None) -> float:
    """User+system seconds of one thread of this process (0 if unknown)."""
    if native_id is None:
        return 0.0
    try:
        with open(f"/proc/self/task/{native_id}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
