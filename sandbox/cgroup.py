"""A cgroup per sandbox: the kernel's machine-wide limits on what one worker
may hold, whatever syscalls it finds (memfd, shared memory, tmpfs files,
kernel memory, raw `clone` threads).

Rlimits are per process and miss memory that is not mapped (a memfd filled
with write()) and tasks made by raw clone(). A memory cgroup charges every
page the worker touches, and a pids cgroup counts every task. The host makes
the group as a child of its OWN cgroup (the delegation pattern: no
privileges beyond writing where the host already lives), moves the worker's
process tree in before any model code runs, and at the end kills whatever
is still inside and removes the group.

Works with cgroup v1 (a hierarchy per controller) and v2 (one hierarchy; see
sandbox.cgroup_setup for where the groups go there); where neither works the
layers are reported missing, with the reason (`support().describe()`).
"""
from __future__ import annotations

import itertools
import os
import re
import signal
import time
from dataclasses import dataclass, field

from sandbox.cgroup_setup import read_file, support
from sandbox.scratch import alive as _alive

GROUP_PREFIX = "sandbox-"
GROUP_NAME = re.compile(rf"^{GROUP_PREFIX}(\d+)-\d+$")   # sandbox-<host pid>-<n>
_counter = itertools.count(1)
_swept: set[str] = set()


@dataclass
class Controller:
    """One controller's group: where its files live and which limits to write."""
    name: str                       # "memory" | "pids"
    path: str                       # the group's directory
    limits: list[tuple[str, str]]   # (file, value), written in order


@dataclass
class Cgroup:
    controllers: list[Controller] = field(default_factory=list)
    active: dict[str, bool] = field(default_factory=dict)   # isolation key -> enforced
    problems: list[str] = field(default_factory=list)       # why a layer is not

    def add(self, pids: list[int]) -> None:
        """Move processes (all their threads) in; a failure clears the layer."""
        for controller in self.controllers:
            key = LAYER_BY_CONTROLLER[controller.name]
            if not self.active[key]:
                continue  # its limits could not be written: joining it would bound nothing
            try:
                for pid in pids:
                    _write(os.path.join(controller.path, "cgroup.procs"), str(pid))
            except OSError as exc:
                self.active[key] = False
                self.problems.append(f"cannot move the worker into {controller.path} "
                                     f"({exc.strerror})")

    def pids(self) -> set[int]:
        found: set[int] = set()
        for controller in self.controllers:
            try:
                with open(os.path.join(controller.path, "cgroup.procs")) as f:
                    found.update(int(line) for line in f if line.strip())
            except (OSError, ValueError):
                continue
        return found

    def destroy(self, wait_s: float = 2.0) -> None:
        """SIGKILL everything still inside (nothing outlives its sandbox), then remove."""
        deadline = time.monotonic() + wait_s
        while True:
            remaining = self.pids()
            for pid in remaining:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            if _remove_dirs(self.controllers) or time.monotonic() > deadline:
                return
            time.sleep(0.01)


LAYER_BY_CONTROLLER = {"memory": "memory_cgroup", "pids": "pids_cgroup"}


def create(memory_bytes: int, max_tasks: int) -> Cgroup:
    """A fresh group with the limits written; layers that failed are reported
    inactive (never claimed). Nothing is inside until `add`."""
    name = f"{GROUP_PREFIX}{os.getpid()}-{next(_counter)}"
    group = Cgroup(active={key: False for key in LAYER_BY_CONTROLLER.values()})
    made: set[str] = set()   # v2: memory and pids share one directory
    for parent in support().parents:
        v2 = parent.version == 2
        limits = _limits(parent.controller, v2, memory_bytes, max_tasks)
        _sweep(parent.path)
        controller = Controller(parent.controller, os.path.join(parent.path, name), limits)
        if controller.path not in made:
            try:
                os.mkdir(controller.path)
            except OSError as exc:
                group.problems.append(f"cannot make {controller.path} ({exc.strerror})")
                continue
            made.add(controller.path)
        group.controllers.append(controller)
        try:
            for file, value in limits:
                _write_limit(os.path.join(controller.path, file), value)
        except OSError as exc:
            group.problems.append(f"cannot write {exc.filename} ({exc.strerror})")
            continue
        group.active[LAYER_BY_CONTROLLER[parent.controller]] = True
    return group


def _limits(controller: str, v2: bool, memory_bytes: int, max_tasks: int) -> list[tuple[str, str]]:
    if controller == "pids":
        return [("pids.max", str(max_tasks))]
    if v2:  # oom.group: an OOM kill takes the whole sandbox (bwrap and worker) at once
        return [("memory.max", str(memory_bytes)), ("memory.swap.max", "0"),
                ("memory.oom.group", "1")]
    # memsw (memory + swap) only exists with swap accounting: no swapping out of the limit
    return [("memory.limit_in_bytes", str(memory_bytes)),
            ("memory.memsw.limit_in_bytes", str(memory_bytes))]


OPTIONAL_FILES = ("memory.swap.max", "memory.memsw.limit_in_bytes",  # absent without swap
                  "memory.oom.group")                                 # before Linux 4.19


def _write_limit(path: str, value: str) -> None:
    try:
        _write(path, value)
    except FileNotFoundError:
        if os.path.basename(path) not in OPTIONAL_FILES:
            raise


def _sweep(parent: str) -> None:
    """Remove groups left by hosts that died (SIGKILL gives no chance to clean up)."""
    if parent in _swept:
        return
    _swept.add(parent)
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        match = GROUP_NAME.match(name)
        if match and not _alive(int(match.group(1))):
            stale = Controller("", os.path.join(parent, name), [])
            Cgroup([stale]).destroy(wait_s=0.5)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (bwrap forks the worker inside its namespaces)."""
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                pending += [int(c) for c in read_file(f"/proc/{current}/task/{task}/children").split()]
        except OSError:
            continue
    return tree


def _remove_dirs(controllers: list[Controller]) -> bool:
    done = True
    for controller in controllers:
        try:
            os.rmdir(controller.path)
        except FileNotFoundError:
            pass
        except OSError:
            done = False
    return done


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    except OSError as exc:   # name the file: it goes into the start-up warning
        raise OSError(exc.errno, exc.strerror, path) from None
    finally:
        os.close(fd)
