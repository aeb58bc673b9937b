"""What one sandbox may hold, and which layer holds it to that.

`memory_mb` bounds ALL the sandbox's RAM: the memory cgroup's limit is
memory_mb itself, and what the worker keeps in tmpfs (the scratch and /tmp
tmpfs under bwrap, a host tmpfs scratch folder without it, memfds) is charged
inside it. Without a memory cgroup the address-space rlimit gets what the
tmpfs sizes leave, so the sum still fits memory_mb (memfd_create is then
refused by seccomp). `scratch_mb` caps the scratch folder on its own too,
where a tmpfs of that size can be made (under bwrap).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sandbox import cgroup_setup, isolation, scratch
from sandbox.results import SandboxError

MIB = 1024 * 1024
MIN_ADDRESS_SPACE_MB = 64   # the worker (interpreter, threads) fails to start below ~40 MB


@dataclass
class Budget:
    memory_mb: int
    scratch_mb: int
    max_tasks: int
    file_limit_mb: int
    bwrap: bool
    owns_scratch: bool
    scratch_in_tmpfs: bool = field(init=False)    # bwrap's private tmpfs of scratch_mb
    scratch_in_memory: bool = field(init=False)   # a host tmpfs folder, for the memory cgroup

    def __post_init__(self) -> None:
        self.scratch_in_tmpfs = self.owns_scratch and self.bwrap
        self.scratch_in_memory = (self.owns_scratch and not self.bwrap
                                  and cgroup_setup.support().version_of("memory") is not None
                                  and scratch.memory_root(self.scratch_mb) is not None)

    @property
    def tmpfs_mb(self) -> int:
        """The sandbox's private tmpfs (scratch, /tmp): RAM outside its address space."""
        return (self.scratch_mb if self.scratch_in_tmpfs else 0) + (
            isolation.PRIVATE_TMP_BYTES // MIB if self.bwrap else 0)

    @property
    def cgroup_bytes(self) -> int:
        return self.memory_mb * MIB

    def address_space_mb(self, memory_charged: bool) -> int:
        """The worker's RLIMIT_AS: memory_mb where the memory cgroup bounds the
        total, else what memory_mb leaves once the tmpfs sizes are counted."""
        if memory_charged:
            return self.memory_mb
        room = self.memory_mb - self.tmpfs_mb
        if room < MIN_ADDRESS_SPACE_MB:
            raise SandboxError(
                f"memory_mb={self.memory_mb} leaves {room} MiB for the worker once its tmpfs "
                f"(scratch_mb and /tmp: {self.tmpfs_mb} MiB) is counted, and there is no "
                f"memory cgroup to share one limit ({cgroup_setup.support().describe()}); "
                f"raise memory_mb or lower scratch_mb")
        return room

    def scratch_bounded(self, memory_charged: bool) -> bool:
        """Whether the scratch's total size has a kernel-enforced cap."""
        return self.scratch_in_tmpfs or (self.scratch_in_memory and memory_charged)

    def unbounded_scratch(self, scratch_dir: str | None) -> str:
        return (f"nothing would cap the total size of the scratch folder {scratch_dir} (each "
                f"file is capped at file_limit_mb={self.file_limit_mb}, their number is not), "
                f"so model code could fill that disk; a total cap needs a memory cgroup "
                f"({cgroup_setup.support().describe()}) and {scratch.MEMORY_ROOT} as a tmpfs "
                f"with scratch_mb free")

    def describe(self, active: dict[str, bool], scratch_dir: str | None,
                 address_space_mb: int) -> dict[str, str]:
        """Which layer bounds memory, tasks and scratch, in words (`active`:
        the sandbox's isolation report; `address_space_mb`: its worker's RLIMIT_AS)."""
        support = cgroup_setup.support()
        memory_charged = active.get("memory_cgroup", False)
        if memory_charged:
            memory = (f"memory_cgroup (cgroup v{support.version_of('memory')}): {self.memory_mb}"
                      " MiB of RAM, scratch, /tmp and memfds included")
        else:
            memory = (f"rlimits: address space {address_space_mb} MiB + tmpfs "
                      f"{self.tmpfs_mb} MiB (memfd_create refused by seccomp)")
        tasks = (f"pids_cgroup (cgroup v{support.version_of('pids')}): {self.max_tasks} tasks"
                 if active.get("pids_cgroup") else "no cap on raw clone() threads")
        if self.scratch_in_tmpfs:
            space = f"private tmpfs of {self.scratch_mb} MiB, counted in memory_mb"
        elif self.scratch_bounded(memory_charged):
            space = f"host tmpfs folder {scratch_dir}, counted in memory_mb by memory_cgroup"
        else:
            space = f"host folder {scratch_dir}: {self.file_limit_mb} MiB per file, no total cap"
        return {"memory": memory, "tasks": tasks, "scratch": space}
