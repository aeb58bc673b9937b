"""`rlm-ray bench gateway` end to end, tiny: simulator child processes, the
gateway, plain litellm; the figures themselves are the command's job."""
from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.timeout(240)
def test_bench_gateway_small_run_prints_every_row():
    out = subprocess.run(
        [sys.executable, "-m", "rlm_ray.cli", "bench", "gateway", "--no-ray", "--phases", "a,b,c,d",
         "--calls", "30", "--rpm", "1200", "--tpm", "100000", "--latency-ms", "20",
         "--overhead-calls", "40"],
        capture_output=True, text=True, timeout=230)
    assert out.returncode == 0, out.stderr[-2000:]
    for row in ("(a) gateway", "(b) gateway", "(c) plain", "(c) gateway", "(d) plain"):
        assert row in out.stdout, out.stdout   # (rich wraps long names inside their cells)
    assert "SIMULATOR" in out.stdout
