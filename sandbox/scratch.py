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
# sandbox-scratch-<host pid>-[<session tag>-]<random>
OWNED_NAME = re.compile(rf"^{PREFIX}(\d+)-[A-Za-z0-9_-]+$")
SESSION_TAG_ENV = "SANDBOX_SESSION_TAG"   # also marks worker command lines (sandbox.process)
_swept = False


def session_tag() -> str:
    """An optional label (an identifier) a supervisor sets to find what it started."""
    tag = os.environ.get(SESSION_TAG_ENV, "")
    return tag if tag.isidentifier() else ""


def make_owned() -> str:
    sweep_stale()
    tag = session_tag()
    prefix = f"{PREFIX}{os.getpid()}-" + (f"{tag}-" if tag else "")
    return os.path.realpath(tempfile.mkdtemp(prefix=prefix))


def sweep_stale(force: bool = False) -> None:
    """Once per process (or when forced): remove scratch folders whose host
    process is gone."""
    global _swept
    if _swept and not force:
        return
    _swept = True
    root = tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:
        return
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
