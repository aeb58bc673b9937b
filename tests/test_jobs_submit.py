"""`ray job submit` end to end: a real local head (its own ports and temp
dir, so stopping it touches nothing else), jobs/codebase_qa.py uploaded as
the working dir, run against the SIMULATOR, result tables read back."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from rlm_ray.batch.define_questions import define_questions, write_jsonl
from rlm_ray.batch.tables import read_run

from conftest import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")


def _env() -> dict:
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    # `python` in the job's entrypoint is this venv's interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture
def ray_head():
    """A separate Ray head on loopback, stopped by pid (never `ray stop`,
    which would also stop the test session's Ray and everyone else's)."""
    temp_dir = tempfile.mkdtemp(prefix="rjob", dir="/tmp")   # short: unix socket paths
    dashboard = free_port()
    command = [str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
               "--port", str(free_port()), "--dashboard-host", "127.0.0.1",
               "--dashboard-port", str(dashboard), "--ray-client-server-port", str(free_port()),
               "--dashboard-agent-listen-port", str(free_port()),
               "--num-cpus", "2", "--disable-usage-stats", "--temp-dir", temp_dir]
    head = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(dashboard, timeout=120)
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        head.send_signal(signal.SIGTERM)   # --block: the head shuts its own processes down
        try:
            head.wait(timeout=20)
        except subprocess.TimeoutExpired:
            head.kill()
        # Anything of this head still alive is found by its unique temp dir.
        leftovers = [p for p in psutil.process_iter(["cmdline"])
                     if any(temp_dir in part for part in (p.info["cmdline"] or []))]
        for proc in leftovers:
            proc.kill()
        psutil.wait_procs(leftovers, timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.timeout(900)
def test_codebase_qa_through_ray_job_submit(ray_head, sim, tmp_path, stdlib_dir):
    src = tmp_path / "repo"
    shutil.copytree(stdlib_dir / "json", src / "json", ignore=shutil.ignore_patterns("__pycache__"))
    queries = write_jsonl(define_questions(src, 3, seed=4), tmp_path / "q.jsonl")
    server = sim()
    out = tmp_path / "results"
    excludes = json.dumps({"excludes": [".venv", ".git", ".demo", ".bench", "**/__pycache__"]})
    submit = [str(RAY), "job", "submit", "--address", ray_head, "--working-dir", str(ROOT),
              "--runtime-env-json", excludes, "--",
              "python", "jobs/codebase_qa.py", str(src), "--corpus", str(tmp_path / "corpus"),
              "--queries", str(queries), "--out", str(out), "--model", "openai/sim/rlm-policy",
              "--api-base", server.base_url, "--concurrency", "2"]
    started = time.monotonic()
    job = subprocess.run(submit, env=_env(), capture_output=True, text=True, timeout=800)
    logs = job.stdout + job.stderr
    assert job.returncode == 0, logs[-3000:]
    assert "succeeded" in logs.lower()
    assert "[rlm-ray batch] done 3/3" in logs          # progress reaches `ray job logs`
    assert "3/3 (100.0%)" in logs                        # the summary's accuracy
    answers = read_run(str(out)).answers.to_pylist()
    assert sorted(a["query_id"] for a in answers) == ["define-0000", "define-0001", "define-0002"]
    assert all(a["status"] == "ok" and a["normalized_match"] for a in answers)
    assert server.stats()["completions"] > 0
    assert time.monotonic() - started > 0
