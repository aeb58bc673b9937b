"""Where this host may make per-sandbox cgroups, found once per process.

cgroup v1 (a hierarchy per controller, still found on hybrid hosts): a
sandbox group is a child of the host's own group in the memory and pids
hierarchies; nothing else is needed.

cgroup v2 (one hierarchy; the default on current distributions and
Kubernetes nodes): a child group only gets the memory and pids controllers
if its parent lists them in `cgroup.subtree_control`, and the kernel refuses
that (EBUSY) while the parent itself holds processes ("no internal
processes"). So the host's group G becomes the sandboxes' parent after its
processes move into a leaf `G/sandbox-hosts`:

    G/                      subtree_control: +memory +pids
    G/sandbox-hosts/        the host process(es), still under G's limits
    G/sandbox-<pid>-<n>/    one per sandbox: memory.max, pids.max

The leaf move is only made where G is ours to rearrange: the root of our
cgroup namespace (a container's own group), or a group holding this process
alone. Elsewhere `SANDBOX_CGROUP_PARENT` names a delegated v2 group to use
(systemd `Delegate=yes`, a Kubernetes pod's delegated subtree). When no way
works the reason is kept and reported once at start-up, and the sandbox
falls back to rlimits (sandbox.host).
"""
from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass, field

CGROUP_ROOT = "/sys/fs/cgroup"
CONTROLLERS = ("memory", "pids")
LEAF_NAME = "sandbox-hosts"          # where a v2 host's processes move
PARENT_ENV = "SANDBOX_CGROUP_PARENT"  # a delegated v2 group to make sandbox groups in
SWITCH_ENV = "SANDBOX_CGROUP"         # "0": no cgroups on purpose
ENABLE_ATTEMPTS = 5                   # a process forked into G mid-move makes enabling fail


@dataclass
class Parent:
    controller: str   # "memory" | "pids"
    path: str         # the directory sandbox groups are made in
    version: int      # 1 | 2


@dataclass
class Support:
    parents: list[Parent] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # why a controller is missing
    turned_off: bool = False                            # SANDBOX_CGROUP=0

    def version_of(self, controller: str) -> int | None:
        return next((p.version for p in self.parents if p.controller == controller), None)

    def describe(self) -> str:
        if self.turned_off:
            return f"cgroups turned off ({SWITCH_ENV}=0)"
        found = ", ".join(f"{p.controller}: v{p.version} under {p.path}" for p in self.parents)
        return "; ".join(x for x in (found, *self.problems) if x) or "no cgroup found"


_lock = threading.Lock()
_support: Support | None = None


def support() -> Support:
    """Found once per process (the v2 leaf move happens at most once)."""
    global _support
    with _lock:
        if _support is None:
            _support = discover()
        return _support


def discover(controllers: tuple[str, ...] = CONTROLLERS) -> Support:
    """Where groups with `controllers` can be made for this process (moving it
    into a v2 leaf if needed and allowed): each with its version, or why not."""
    if os.environ.get(SWITCH_ENV) == "0":
        return Support(turned_off=True)
    explicit = os.environ.get(PARENT_ENV)
    if explicit:   # a delegated v2 group chosen by the operator, whatever else is mounted
        parent, problem = prepare_v2(explicit, controllers, may_move=False)
        return Support(parents=[Parent(c, parent, 2) for c in controllers] if parent else [],
                       problems=[problem] if problem else [])
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        return Support(problems=[f"cannot read /proc/self/cgroup ({exc.strerror})"])
    found: dict[str, Parent] = {}
    unified = None
    for line in lines:
        hierarchy, bound, path = line.split(":", 2)
        if hierarchy == "0":
            unified = path
            continue
        for controller in bound.split(","):
            if controller in controllers:
                found[controller] = Parent(
                    controller, os.path.join(CGROUP_ROOT, controller, path.lstrip("/")), 1)
    result = Support()
    wanted = tuple(c for c in controllers if c not in found)
    if wanted:
        if unified is None:
            result.problems.append(f"no cgroup hierarchy has {', '.join(wanted)}")
        else:
            parent, problem = _v2_parent(unified, wanted)
            if parent:
                found.update({c: Parent(c, parent, 2) for c in wanted})
            else:
                result.problems.append(problem)
    result.parents = [found[c] for c in controllers if c in found]
    return result


def unified_root() -> str:
    if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")):
        return CGROUP_ROOT                       # v2 only
    return os.path.join(CGROUP_ROOT, "unified")  # hybrid


def _v2_parent(own_path: str, controllers: tuple[str, ...]) -> tuple[str | None, str]:
    """(the group to make sandbox groups in, or None and why not)."""
    group = os.path.join(unified_root(), own_path.lstrip("/"))
    if os.path.basename(group) == LEAF_NAME:  # an earlier host here already moved us
        group = os.path.dirname(group)
    # Our cgroup namespace's root is the container's own group: ours to rearrange.
    return prepare_v2(group, controllers, may_move=own_path == "/" or _holds_only_us(group))


def prepare_v2(group: str, controllers: tuple[str, ...], may_move: bool
               ) -> tuple[str | None, str]:
    """Enable `controllers` for `group`'s children, first moving the processes
    inside into the leaf LEAF_NAME when the kernel refuses (EBUSY) and
    `may_move`. Returns (group, "") or (None, the reason)."""
    available = read_file(os.path.join(group, "cgroup.controllers")).split()
    absent = [c for c in controllers if c not in available]
    if absent:
        return None, (f"cgroup v2: {', '.join(absent)} not delegated to {group} (delegate "
                      f"them, or set {PARENT_ENV} to a group that has them)")
    enable = " ".join(f"+{c}" for c in controllers)
    for _ in range(ENABLE_ATTEMPTS):
        error = _write(os.path.join(group, "cgroup.subtree_control"), enable)
        if error is None:
            return group, ""
        if error != errno.EBUSY:
            return None, (f"cgroup v2: cannot enable {', '.join(controllers)} for children of "
                          f"{group} ({os.strerror(error)}; run the host in a delegated group "
                          f"or set {PARENT_ENV})")
        if not may_move:
            return None, (f"cgroup v2: {group} holds processes, so the kernel will not enable "
                          f"controllers for its children; move them into a leaf group or set "
                          f"{PARENT_ENV} to a delegated group without processes")
        moved = _move_into_leaf(group)
        if moved:
            return None, f"cgroup v2: cannot move the processes of {group} into a leaf ({moved})"
    return None, f"cgroup v2: {group} kept gaining processes while moving them into a leaf"


def _move_into_leaf(group: str) -> str:
    """Move every process of `group` into group/LEAF_NAME ('' or the error)."""
    leaf = os.path.join(group, LEAF_NAME)
    try:
        os.makedirs(leaf, exist_ok=True)
    except OSError as exc:
        return exc.strerror or str(exc)
    for pid in read_file(os.path.join(group, "cgroup.procs")).split():
        error = _write(os.path.join(leaf, "cgroup.procs"), pid)
        if error not in (None, errno.ESRCH):   # ESRCH: it exited meanwhile
            return os.strerror(error)
    return ""


def _holds_only_us(group: str) -> bool:
    return read_file(os.path.join(group, "cgroup.procs")).split() == [str(os.getpid())]


def _write(path: str, value: str) -> int | None:
    """None, or the errno of a failed write."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        return exc.errno
    try:
        os.write(fd, value.encode())
    except OSError as exc:
        return exc.errno
    finally:
        os.close(fd)
    return None


def read_file(path: str) -> str:
    """A cgroup file's text, or "" when it cannot be read (gone, not mounted)."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""
