"""Host-side scratch folders (only where scratch cannot live inside the
sandbox's own tmpfs: without bubblewrap, or a folder the caller gave).

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
OWNED_NAME = re.compile(rf"^{PREFIX}(\d+)-[A-Za-z0-9_]+$")   # sandbox-scratch-<host pid>-<random>
_swept = False


def make_owned() -> str:
    sweep_stale()
    return os.path.realpath(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))


def sweep_stale() -> None:
    """Once per process: remove scratch folders whose host process is gone."""
    global _swept
    if _swept:
        return
    _swept = True
    root = tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        match = OWNED_NAME.match(name)
        if match and not _alive(int(match.group(1))):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True
