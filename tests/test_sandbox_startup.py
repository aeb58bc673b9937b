"""What a sandbox costs to start: its worker loads bytecode the host compiled
once (and model code cannot alter it), and the processes it keeps alive."""
from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

from sandbox import bytecode, isolation
from sandbox.bench import sandbox_cpu_s, sandbox_processes

SANDBOX_DEFAULTS = {"timeout_s": 20}


def test_bytecode_is_compiled_once_and_refreshed_when_a_source_changes(tmp_path):
    package = tmp_path / "pkg"
    shutil.copytree(isolation.package_dir(), package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    sources = sorted(p for p in package.iterdir() if p.suffix == ".py")
    assert bytecode.ensure(str(package)) == len(sources)
    worker = package / "worker.py"
    cached = importlib.util.cache_from_source(str(worker))
    assert not bytecode._stale(str(worker), cached)
    worker.write_text(worker.read_text() + "\n# changed\n")
    assert bytecode._stale(str(worker), cached)     # the importer would ignore it now
    bytecode.ensure.cache_clear()
    assert bytecode.ensure(str(package)) == len(sources)
    assert not bytecode._stale(str(worker), cached)


def test_worker_bytecode_is_fresh_and_model_code_cannot_alter_it(make_sandbox, mode):
    sb = make_sandbox()
    for name in ("worker.py", "protocol.py", "confine.py", "proxy.py", "output.py"):
        source = os.path.join(isolation.package_dir(), name)
        assert not bytecode._stale(source, importlib.util.cache_from_source(source)), name
    result = sb.run(
        "import sys, os\n"
        "cached = sys.modules['sandbox.worker'].__spec__.cached\n"
        "print(os.path.exists(cached))\n"
        "open(cached, 'r+b').write(b'poison')")
    assert result.stdout.strip() == "True"
    assert result.error and ("PermissionError" in result.error or "OSError" in result.error)
    source = os.path.join(isolation.package_dir(), "worker.py")
    assert not bytecode._stale(source, importlib.util.cache_from_source(source))


def test_processes_per_sandbox(make_sandbox, mode):
    """bwrap: its outer process (in the host's pid namespace), its init (pid 1
    of the sandbox's pid namespace) and the worker; without bwrap the worker alone."""
    sb = make_sandbox()
    assert sandbox_processes(sb) == (3 if mode == "bwrap" else 1)
    assert sandbox_cpu_s(sb) > 0
