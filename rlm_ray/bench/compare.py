"""`rlm-ray bench compare`: the same scripted workloads run by rlm-ray and by
the official `rlms` package, against ONE simulator process with one latency
and one RPM/TPM limit, measured by that simulator's own counters.

rlms lives in its own venv (`.bench/rlms-venv`, made here with pip, never a
project dependency) and runs `rlms_driver.py` there. If it cannot be installed
or run, the reason is printed and a plain asyncio + litellm loop (the same
sub-calls, `baseline_concurrency` at a time) stands in for it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from rlm_ray.bench import compare_workloads as workloads
from rlm_ray.bench.cpu import BatchCpu
from rlm_ray.bench.floor import latency_floor
from rlm_ray.bench.scoring import score

DRIVER = Path(__file__).with_name("rlms_driver.py")
MODEL = "sim/rlm-policy"


@dataclass(frozen=True)
class Limits:
    latency_ms: float
    rpm: float
    tpm: float
    max_retries: int = 8
    pacing: str = "even"    # the gateway's default; `compare` asks for burst (see compare_cli)


@dataclass
class Phase:
    task: str                  # fan-out | batch
    system: str                # rlm-ray | rlms | asyncio+litellm
    wall_s: float
    requests: int              # chat requests the simulator received
    failed_calls: int          # calls that failed for good (after retries)
    rejected_429: int          # attempts the simulator refused for rate
    max_concurrency: int
    correct: float             # mean score over the task's questions
    notes: str = ""
    completed: bool = True     # every question ended normally (no error status, no crash)
    floor_s: float | None = None   # the latency floor: no engine can finish sooner (latency_floor)
    cpu_s: dict[str, float] | None = None   # CPU-s over the question by kind of process (bench/cpu.py)

    @property
    def requests_per_min(self) -> float:
        return self.requests / self.wall_s * 60 if self.wall_s else 0.0


@dataclass
class Simulator:
    """`python -m rlm_ray.sim` as a child process: both engines reach it over HTTP."""
    limits: Limits
    proc: subprocess.Popen | None = None
    url: str = ""

    def __enter__(self) -> "Simulator":
        from rlm_ray.sim.commands import add_sim_arguments  # noqa: F401  (fail early if absent)

        import tempfile

        cmd = [sys.executable, "-m", "rlm_ray.sim", "--port", "0",
               "--latency-ms", str(self.limits.latency_ms), "--rpm", str(self.limits.rpm),
               "--tpm", str(self.limits.tpm), "--context-window", "1000000"]
        self._log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            self._log.seek(0)
            for line in self._log.read().splitlines():   # "SIMULATOR listening on http://...:P/v1 ..."
                if "listening on" in line:
                    self.url = line.split("listening on", 1)[1].split()[0].removesuffix("/v1")
                    return self
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("the simulator did not start within 60 s")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self._log.close()

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(self.url + "/admin/reset", method="POST"),
                               timeout=10).read()

    def stats(self) -> dict:
        from rlm_ray.sim import fetch_stats

        return fetch_stats(self.url)


def _measured(sim: Simulator, task: str, system: str, wall: float, failed: int,
              correct: float, notes: str = "", completed: bool = True) -> Phase:
    stats = sim.stats()
    by_status = {int(k): v for k, v in stats["by_status"].items()}
    return Phase(task, system, wall, stats["requests"], failed, by_status.get(429, 0),
                 stats["max_concurrency"], correct, notes, completed)


def _mean_score(tasks: list[workloads.Task], answers: dict[str, str | None]) -> float:
    scores = [score(t.family, answers.get(t.task_id), t.answer).score for t in tasks]
    return sum(scores) / len(scores) if scores else 0.0


# ---- rlm-ray ---------------------------------------------------------------

def _gateway(sim: Simulator, limits: Limits):
    from rlm_ray.llm.config import GatewayConfig

    return GatewayConfig(rpm=limits.rpm, tpm=limits.tpm, api_base=sim.base_url, cache_mode="off",
                         max_retries=limits.max_retries, pacing=limits.pacing)


def rlm_ray_fanout(sim: Simulator, limits: Limits, work: workloads.Workload) -> Phase:
    from rlm_ray.engine import RLM

    engine = RLM(f"openai/{MODEL}", api_base=sim.base_url, gateway=_gateway(sim, limits),
                 max_iterations=10)
    # Cluster singletons (the gateway actors, one per slot of the first batch, the
    # limiter, worker imports) start once per cluster, not per question: warm them.
    warm = workloads.fanout(8, seed=99)
    engine.answer(warm.text, warm.tasks[0].question)
    sim.reset()
    task = work.tasks[0]
    cpu = BatchCpu()
    cpu.start()
    started = time.monotonic()
    result = engine.answer(work.text, task.question, query_id="fanout")
    wall = time.monotonic() - started
    cpu.sample()
    failed = sum(1 for c in result.calls if c["status"] != "ok")
    roots, waves, floor = latency_floor(result.calls, limits.latency_ms / 1000)
    notes = (f"status={result.status}" + (f": {result.error[:120]}" if result.error else "")
             + f"; floor = ({roots} root turns + {waves} sub-call waves) x latency")
    phase = _measured(sim, "fan-out", "rlm-ray", wall, failed,
                      _mean_score(work.tasks, {task.task_id: result.answer}), notes,
                      completed=result.status == "ok")
    phase.floor_s = floor
    # Processes alive at the end (the question's sandbox is gone by then: not in the split).
    phase.cpu_s = {kind: round(s, 2) for kind, s in sorted(cpu.by_kind().items()) if s >= 0.01}
    return phase


def rlm_ray_batch(sim: Simulator, limits: Limits, work: workloads.Workload, workdir: Path,
                  concurrency: int) -> Phase:
    import shutil

    from rlm_ray.batch.runner import run
    from rlm_ray.batch.tables import read_run
    from rlm_ray.corpus import ingest

    folder = workdir / "compare-batch"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with open(folder / "docs.jsonl", "w") as f:
        f.writelines(json.dumps(d) + "\n" for d in work.documents)
    with open(folder / "queries.jsonl", "w") as f:
        f.writelines(json.dumps({"query_id": t.task_id, "question": t.question, "answer": t.answer}) + "\n"
                     for t in work.tasks)
    ingest([str(folder / "docs.jsonl")], str(folder / "corpus"))
    rlm = {"model": f"openai/{MODEL}", "sub_model": None, "api_base": sim.base_url,
           "max_depth": 1, "max_iterations": 10, "timeout_s": None, "budget_usd": None,
           "gateway": _gateway(sim, limits)}
    sim.reset()
    started = time.monotonic()
    run(str(folder / "corpus"), str(folder / "queries.jsonl"), str(folder / "results"), rlm=rlm,
        concurrency=concurrency, progress=False)
    wall = time.monotonic() - started
    tables = read_run(str(folder / "results"))
    rows = tables.answers.to_pylist()
    answers = {a["query_id"]: a["answer"] for a in rows}
    not_ok = sum(1 for a in rows if a["status"] != "ok")
    failed = sum(1 for c in tables.calls.to_pylist() if c["status"] != "ok")
    notes = f"{concurrency} actors, corpus context, includes actor start-up"
    return _measured(sim, "batch", "rlm-ray", wall, failed, _mean_score(work.tasks, answers),
                     notes + (f"; {not_ok} questions not ok" if not_ok else ""),
                     completed=not_ok == 0 and len(rows) == len(work.tasks))


# ---- rlms --------------------------------------------------------------------

def ensure_rlms(venv: Path, log) -> tuple[Path | None, str]:
    """The rlms venv's python, installing `rlms` there if needed; else (None, why)."""
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import rlm"],
                                          capture_output=True).returncode == 0:
        return python, "rlms already installed in " + str(venv)
    log(f"installing the official `rlms` package into {venv} (a separate venv) ...")
    steps = [[sys.executable, "-m", "venv", str(venv)], [str(python), "-m", "pip", "install", "-q", "rlms"]]
    for cmd in steps:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"`{' '.join(cmd)}` failed: {exc}"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return None, f"`{' '.join(cmd)}` exited {done.returncode}: {tail[0]}"
    return python, "installed rlms into " + str(venv)


def rlms_phase(python: Path, sim: Simulator, limits: Limits, work: workloads.Workload,
               task_name: str) -> Phase:
    spec = {"base_url": sim.base_url, "model": MODEL, "max_iterations": 10,
            "max_retries": limits.max_retries,
            "tasks": [{"id": t.task_id, "question": t.question, "context": work.text} for t in work.tasks]}
    sim.reset()
    env = {k: v for k, v in os.environ.items() if not (k.startswith("AWS_") or k.endswith("_API_KEY"))}
    done = subprocess.run([str(python), str(DRIVER)], input=json.dumps(spec), capture_output=True,
                          text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"rlms driver failed: {done.stderr.strip().splitlines()[-1:]}")
    out = json.loads(done.stdout)
    answers = {r["id"]: r["answer"] for r in out["results"]}
    errors = sum(1 for r in out["results"] if r["error"])
    return _measured(sim, task_name, "rlms", out["wall_s"], out["failed_calls"],
                     _mean_score(work.tasks, answers),
                     "one completion at a time (rlms's REPL is process-global)"
                     + (f"; {errors} questions raised" if errors else ""), completed=not errors)


# ---- the plain loop ------------------------------------------------------------

async def _warm_litellm(sim: Simulator) -> None:
    """litellm's first call builds its clients: not part of anyone's fan-out."""
    from rlm_ray.llm._litellm import litellm

    await litellm().acompletion(model=f"openai/{MODEL}", api_base=sim.base_url, api_key="sim-no-key",
                                messages=[{"role": "user", "content": "warm-up"}])


def plain_fanout(sim: Simulator, limits: Limits, work: workloads.Workload, concurrency: int) -> Phase:
    """The fan-out's sub-calls only (no root model), litellm.acompletion under a semaphore."""
    import asyncio

    from rlm_ray.llm._litellm import litellm

    pieces = workloads.pack_lines(work.text.splitlines())
    label = work.tasks[0].question.split("'")[1]
    prompt = f"Count the records labelled '{label}' in the text below. Reply with the number only.\n\n"
    failed = 0

    async def main() -> list[str]:
        gate = asyncio.Semaphore(concurrency)

        async def one(piece: str) -> str:
            nonlocal failed
            async with gate:
                try:
                    reply = await litellm().acompletion(
                        model=f"openai/{MODEL}", api_base=sim.base_url, api_key="sim-no-key",
                        messages=[{"role": "user", "content": prompt + piece}],
                        num_retries=limits.max_retries)
                    return reply.choices[0].message.content
                except Exception:  # noqa: BLE001  (a failed call is a figure here)
                    failed += 1
                    return "0"
        return await asyncio.gather(*(one(p) for p in pieces))

    asyncio.run(_warm_litellm(sim))
    sim.reset()
    started = time.monotonic()
    replies = asyncio.run(main())
    wall = time.monotonic() - started
    total = str(sum(int(r.strip()) for r in replies if r.strip().isdigit()))
    return _measured(sim, "fan-out", "asyncio+litellm", wall, failed,
                     _mean_score(work.tasks, {work.tasks[0].task_id: total}),
                     f"sub-calls only, Semaphore({concurrency}), no root model")
