"""Host-side scratch folders (only where scratch cannot live inside the
sandbox's own tmpfs: without bubblewrap, or a folder the caller gave).

Without bubblewrap the sandbox's own scratch goes to a tmpfs of the host
(/dev/shm) when one is writable: tmpfs pages are charged to the memory cgroup
of the process that writes them, so the worker's memory cgroup bounds the
scratch's total size as part of `memory_mb` (on a disk folder only each file
is capped, by RLIMIT_FSIZE).

A folder the sandbox makes is named after the host's pid, so one left by a
host that was killed (no chance to clean up) is removed by the next host
that starts a sandbox on this machine.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile

PREFIX = "sandbox-scratch-"
# sandbox-scratch-<host pid>-[<session tag>-]<random>
OWNED_NAME = re.compile(rf"^{PREFIX}(\d+)-[A-Za-z0-9_-]+$")
SESSION_TAG_ENV = "SANDBOX_SESSION_TAG"   # also marks worker command lines (sandbox.process)
MEMORY_ROOT = "/dev/shm"
_swept = False


def session_tag() -> str:
    """An optional label (an identifier) a supervisor sets to find what it started."""
    tag = os.environ.get(SESSION_TAG_ENV, "")
    return tag if tag.isidentifier() else ""


def make_owned(in_memory: bool = False) -> str:
    """A fresh folder: in MEMORY_ROOT when `in_memory` (checked by the caller
    with memory_root), else in the temp dir."""
    sweep_stale()
    tag = session_tag()
    prefix = f"{PREFIX}{os.getpid()}-" + (f"{tag}-" if tag else "")
    root = MEMORY_ROOT if in_memory else None
    return os.path.realpath(tempfile.mkdtemp(prefix=prefix, dir=root))


def memory_root(room_mb: int = 0) -> str | None:
    """MEMORY_ROOT if it is a writable tmpfs mount here with `room_mb` free
    (a container's /dev/shm is often 64 MiB, shared by every sandbox)."""
    try:
        free = os.statvfs(MEMORY_ROOT)
    except OSError:
        return None
    if not os.access(MEMORY_ROOT, os.W_OK | os.X_OK) or free.f_bavail * free.f_frsize < room_mb << 20:
        return None
    try:
        with open("/proc/self/mounts") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return None
    types = {fields[1]: fields[2] for fields in mounts if len(fields) > 2}
    return MEMORY_ROOT if types.get(MEMORY_ROOT) == "tmpfs" else None


def empty(folder: str) -> None:
    """Remove what is inside `folder` (an owned scratch, when its worker restarts)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            try:
                os.unlink(entry.path)
            except OSError:
                pass


def sweep_stale(force: bool = False) -> None:
    """Once per process (or when forced): remove scratch folders whose host
    process is gone."""
    global _swept
    if _swept and not force:
        return
    _swept = True
    for root in {tempfile.gettempdir(), MEMORY_ROOT}:
        try:
            names = os.listdir(root)
        except OSError:
            continue
        for name in names:
            match = OWNED_NAME.match(name)
            if match and not alive(int(match.group(1))):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def alive(pid: int) -> bool:
    """Whether `pid` names a live process (anyone's): stale-folder and stale-group sweeps."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True
