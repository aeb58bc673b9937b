"""`ensure_ray` starts what the docs promise: a local instance of its own
unless RAY_ADDRESS (or an explicit address) names a cluster, never the
cluster a stale Ray session file names; and it says which."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from rlm_ray._ray import describe_target, ray_target

DEAD_GCS = "127.0.0.1:9"   # the discard port: no GCS answers there
START_AND_REPORT = """
import ray
from rlm_ray._ray import ensure_ray
ensure_ray(num_cpus=1)
print("GCS", ray.get_runtime_context().gcs_address, flush=True)
ray.shutdown()
"""


@pytest.mark.timeout(300)
def test_a_stale_session_file_naming_a_dead_cluster_is_not_joined():
    """A cluster that died without `ray stop` leaves ray_current_cluster behind;
    a bare ray.init() would retry its dead GCS. Run in a subprocess with its own
    Ray temp dir (short: Ray's socket paths have a length limit), so neither the
    test session's Ray nor anyone else's /tmp/ray is touched."""
    temp_root = tempfile.mkdtemp(prefix="rs-", dir="/tmp")
    try:
        session_dir = Path(temp_root, "ray")
        session_dir.mkdir()
        (session_dir / "ray_current_cluster").write_text(DEAD_GCS)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        env.update(RAY_TMPDIR=temp_root, RAY_AUTH_MODE="disabled",
                   PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        done = subprocess.run([sys.executable, "-c", START_AND_REPORT], env=env,
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        gcs = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("GCS ")]
        assert gcs and gcs[0] != DEAD_GCS, done.stdout
        assert "ray: starting a local instance" in done.stderr
    finally:
        shutil.rmtree(temp_root, ignore_errors=True)


def test_the_target_is_local_unless_an_address_is_named(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_target() == "local"
    assert "local instance" in describe_target()
    assert ray_target("10.0.0.5:6379") == "10.0.0.5:6379"
    assert describe_target("10.0.0.5:6379") == "ray: joining the cluster at 10.0.0.5:6379"
    monkeypatch.setenv("RAY_ADDRESS", "ray-head:6379")
    assert ray_target() == "ray-head:6379"
    assert describe_target() == "ray: joining the cluster at ray-head:6379 (RAY_ADDRESS)"
