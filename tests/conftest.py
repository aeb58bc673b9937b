"""Shared, session-wide test infrastructure: one real Ray instance, one real
S3 endpoint (moto_server over HTTP on loopback), the CPython stdlib as a real
codebase. Area-specific fixtures live next to their tests."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from pathlib import Path

import pytest

import rlm_ray  # noqa: F401  (process defaults: offline litellm/tiktoken, RAY_AUTH_MODE)

# Marks every sandbox worker, bwrap and scratch folder this session starts (and
# those of Ray workers it starts, which inherit the environment): the
# session-end check below looks for exactly these, not other runs' on this machine.
SANDBOX_SESSION_TAG = f"pytest{os.getpid()}_{uuid.uuid4().hex[:8]}"
os.environ["SANDBOX_SESSION_TAG"] = SANDBOX_SESSION_TAG

# Nothing in the suite may use real credentials, even by accident.
for _var in list(os.environ):
    if _var.startswith("AWS_") or _var.endswith("_API_KEY"):
        del os.environ[_var]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint: moto_server on 127.0.0.1, with dummy credentials in
    the environment (set before Ray starts so its workers inherit them)."""
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    url = f"http://127.0.0.1:{port}"
    os.environ.update({
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": url,
    })
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh, empty bucket per test: returns its name."""
    import boto3

    name = f"t-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_session(s3_endpoint):
    """The one Ray instance of the test session (start-up costs seconds)."""
    import ray

    # address="local": always a fresh instance of our own, never a cluster some other
    # process left in /tmp/ray (ray.init would try to join it and refuse num_cpus).
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def stdlib_dir() -> Path:
    """The CPython standard library of this interpreter: a real ~10M-token codebase."""
    return Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="session")
def stdlib_subset(tmp_path_factory, stdlib_dir) -> Path:
    """A small, fixed slice of the stdlib (a few packages) for fast tests."""
    dst = tmp_path_factory.mktemp("stdlib_subset")
    for name in ("json", "email", "logging", "http", "collections", "importlib"):
        shutil.copytree(stdlib_dir / name, dst / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("textwrap.py", "shlex.py", "fractions.py", "difflib.py"):
        shutil.copy(stdlib_dir / name, dst / name)
    return dst


@pytest.fixture
def sim():
    """Factory: `sim(**knobs) -> SimServer`, a provider SIMULATOR started on a
    free loopback port; every server it made is stopped at teardown."""
    from rlm_ray.sim import SimServer

    servers = []

    def start(**knobs):
        server = SimServer(**knobs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(params=["bwrap", "direct"])
def mode(request) -> str:
    """Sandbox isolation mode: every sandbox test runs under both."""
    return request.param


@pytest.fixture
def make_sandbox(mode, request):
    """Sandbox factory in `mode`, closing what it made; a test module's
    SANDBOX_DEFAULTS (e.g. timeout_s) apply unless a call overrides them."""
    from sandbox import Sandbox

    defaults = getattr(request.module, "SANDBOX_DEFAULTS", {})
    made: list = []

    def make(host_functions=None, **opts):
        sb = Sandbox(host_functions, use_bwrap=(mode == "bwrap"), **{**defaults, **opts})
        made.append(sb)
        return sb

    yield make
    for sb in made:
        sb.close()


@pytest.fixture(scope="session")
def sim_server():
    """One default-knob SIMULATOR for the session (call `reset_stats()` if you count)."""
    from rlm_ray.sim import SimServer

    with SimServer() as server:
        yield server


# -- session end: the suite leaves no sandbox worker, bwrap, scratch folder or query worker --

def _sandbox_leftovers() -> list[str]:
    import re
    import tempfile

    marker = re.compile(rb"sandbox-session=%s[\s\x00]" % SANDBOX_SESSION_TAG.encode())
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker.search(Path(f"/proc/{entry}/cmdline").read_bytes()):
                found.append(f"process {entry}")
        except OSError:
            continue
    from sandbox.scratch import MEMORY_ROOT   # direct mode's scratch lives there

    for root in (Path(tempfile.gettempdir()), Path(MEMORY_ROOT)):
        found += [f"folder {p}" for p in root.glob(f"sandbox-scratch-*-{SANDBOX_SESSION_TAG}-*")]
    return found + _query_worker_leftovers()


def _query_worker_leftovers() -> list[str]:
    """Corpus query workers (corpus/query_pool.py) started by this session: they
    inherit its environment, so its tag marks them too."""
    tag = f"SANDBOX_SESSION_TAG={SANDBOX_SESSION_TAG}\0".encode()
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and b"rlm_ray.corpus.query_worker" in \
                    Path(f"/proc/{entry}/cmdline").read_bytes() and \
                    tag in Path(f"/proc/{entry}/environ").read_bytes() + b"\0":
                found.append(f"query worker {entry}")
        except OSError:
            continue
    return found


def pytest_sessionfinish(session, exitstatus):
    """Processes get a moment to exit (Ray workers are torn down just before);
    folders of hosts that died are what the next host sweeps, so sweep first."""
    from sandbox import scratch

    pools = sys.modules.get("rlm_ray.corpus.query_pool")
    if pools is not None:   # workers of Corpus handles this process never closed
        pools.close_all()   # (atexit would end them; the check below is for orphans)
    forks = sys.modules.get("sandbox.fork_server")
    if forks is not None:   # this process's sandbox template (it dies with us anyway)
        forks.close_all()
    deadline = time.monotonic() + 20
    while True:
        scratch.sweep_stale(force=True)
        leftovers = _sandbox_leftovers()
        if not leftovers or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if leftovers:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("sandbox leftovers after the session: " + ", ".join(leftovers),
                                red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
