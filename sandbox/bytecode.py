"""Compiled bytecode for the worker's own modules, made once by the host.

The worker starts with `-B` (it must never write into the host's files) and
its package is mounted read-only, so without a `__pycache__` it would compile
worker.py, protocol.py, confine.py ... from source at EVERY start: about a
quarter of a start-up's CPU. The host compiles them once per process into the
package's own `__pycache__` (where any import would put them; the worker's
import system checks each file against its source's size and mtime, which a
read-only bind keeps). Model code cannot alter them: under bwrap the package
is mounted read-only, without it Landlock gives the worker no write access
outside scratch. A package the host cannot write to (a read-only install)
simply starts as before.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import py_compile


@functools.cache
def ensure(package_dir: str) -> int:
    """Compile the package's modules whose cached bytecode is missing or
    stale; returns how many are now fresh (0 when the folder is read-only)."""
    fresh = 0
    try:
        names = sorted(n for n in os.listdir(package_dir) if n.endswith(".py"))
    except OSError:
        return 0
    for name in names:
        source = os.path.join(package_dir, name)
        # the worker runs without -O, whatever this host runs with
        cached = importlib.util.cache_from_source(source, optimization="")
        try:
            if not _stale(source, cached):
                fresh += 1
                continue
            # TIMESTAMP: the check the worker's import system makes by default
            py_compile.compile(source, cfile=cached, doraise=True, optimize=0,
                               invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
            fresh += 1
        except (OSError, py_compile.PyCompileError):
            continue   # read-only or racing another host: this module compiles at start
    return fresh


def _stale(source: str, cached: str) -> bool:
    """Whether `cached` does not match `source` (the header the importer checks)."""
    try:
        with open(cached, "rb") as f:
            header = f.read(16)
        stat = os.stat(source)
    except OSError:
        return True
    if len(header) < 16 or header[:4] != importlib.util.MAGIC_NUMBER:
        return True
    flags = int.from_bytes(header[4:8], "little")
    mtime = int.from_bytes(header[8:12], "little")
    size = int.from_bytes(header[12:16], "little")
    return flags != 0 or mtime != (int(stat.st_mtime) & 0xFFFFFFFF) or size != (
        stat.st_size & 0xFFFFFFFF)
