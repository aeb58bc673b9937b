"""`rlm-ray bench engine`: two figures of the engine itself (not of a model).

(a) Root-actor memory is flat in corpus size: RSS of an RLMActor (psutil on
    its pid, sampled while it answers a needle question) over the stdlib
    (~10M tokens) vs the stdlib ingested `copies` times under different
    prefixes (~100M tokens). The corpus stays in Parquet/DuckDB; the actor
    holds metadata and the rows its code asked for.
(b) Per-sub-call engine overhead against a zero-latency SIMULATOR: N sub-calls
    via `llm_query_batched` inside the REPL (sandbox bridge, budget checks,
    lineage rows) vs the same N calls straight through the gateway; and N
    sequential `llm_query` calls vs N sequential gateway calls.
"""
from __future__ import annotations

import os
import statistics
import sysconfig
import threading
import time
from pathlib import Path

from rlm_ray.sim import register_policy

STDLIB_EXCLUDE = ["site-packages/", "__pycache__/", "*.pyc"]
NEEDLE_KEY, NEEDLE_VALUE = "BENCH-KEY", "7781-ZZ"
FANOUT_POLICY = "bench/fanout"
REPEATS = 3


@register_policy(FANOUT_POLICY)
def _fanout(messages: list[dict]) -> str:
    """Root: one block of N batched sub-calls, one of N sequential ones, then FINAL.
    Question: `fanout N`. Sub-calls: a fixed short reply."""
    if not any(m.get("role") == "system" for m in messages):
        return "ok"
    first = next(m["content"] for m in messages if m["role"] == "user")
    n = int(first.splitlines()[0].split()[-1])
    if len([m for m in messages if m["role"] == "user"]) > 1:
        return "```repl\nFINAL(str(len(batched) + len(serial)))\n```"
    return ("```repl\nbatched = llm_query_batched([f'item {i}' for i in range(%d)])\n```\n"
            "```repl\nserial = [llm_query(f'one {i}') for i in range(%d)]\n```" % (n, n // 4))


def _ingest_once(out: Path, sources: list[str]) -> str:
    from rlm_ray.corpus import ingest

    if not (out / "manifest.json").exists():
        print(f"ingesting {len(sources)} source(s) into {out} (cached for later runs) ...",
              flush=True)
        ingest(sources, str(out), exclude=STDLIB_EXCLUDE)
    return str(out)


def _corpora(work: Path, copies: int) -> tuple[str, str]:
    stdlib = sysconfig.get_paths()["stdlib"]
    needle = work / "needle"
    needle.mkdir(parents=True, exist_ok=True)
    (needle / "notes.txt").write_text(f"The secret code for {NEEDLE_KEY} is {NEEDLE_VALUE}.\n")
    small = _ingest_once(work / "corpus-1x", [stdlib, str(needle)])
    large = _ingest_once(work / f"corpus-{copies}x", [stdlib] * copies + [str(needle)])
    return small, large


def _actor_rss(rlm, corpus, question: str) -> dict:
    """Baseline and peak RSS of a fresh RLMActor answering `question`."""
    import psutil
    import ray

    from rlm_ray.engine.actor import RLMActor

    actor = RLMActor.remote()
    try:
        proc = psutil.Process(ray.get(actor.pid.remote()))
        baseline = proc.memory_info().rss
        spec = rlm.plan()
        ref = actor.answer.remote(corpus, question, "bench-rss", spec)
        peak, done = baseline, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, proc.memory_info().rss)
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        result = ray.get(ref)
        done.set()
        sampler.join()
        spec.budget.close()
        return {"baseline": baseline, "peak": peak, "status": result.status,
                "answer": result.answer, "wall_s": result.wall_s}
    finally:
        ray.kill(actor)


def bench_rss(work: Path, copies: int, model: str, api_base: str) -> list[tuple]:
    from rlm_ray.corpus import Corpus
    from rlm_ray.engine import RLM

    small_uri, large_uri = _corpora(work, copies)
    rlm = RLM(model, api_base=api_base)
    question = f"What is the secret code for {NEEDLE_KEY}?"
    rows = []
    for label, uri in (("1x stdlib", small_uri), (f"{copies}x stdlib", large_uri)):
        corpus = Corpus.open(uri)
        m = _actor_rss(rlm, corpus, question)
        rows.append((label, len(corpus), m["baseline"] / 2**20, m["peak"] / 2**20,
                     m["status"], m["answer"], m["wall_s"]))
    return rows


class DirectGateway:
    """The same calls without the engine: complete_many, then sequential complete.
    A Ray actor like the RLMActor (one warm process), not this process, which
    also serves the in-process simulator (sharing its GIL would skew the baseline)."""

    def run(self, n: int, model: str, api_base: str) -> tuple[float, float]:
        return _direct_gateway(n, model, api_base)


def _direct_gateway(n: int, model: str, api_base: str) -> tuple[float, float]:
    from rlm_ray import llm
    from rlm_ray.llm.config import GatewayConfig

    gateway = GatewayConfig(api_base=api_base)
    started = time.perf_counter()
    llm.complete_many([{"messages": [{"role": "user", "content": f"item {i}"}]} for i in range(n)],
                      model=model, config=gateway, temperature=0)
    batched = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(n // 4):
        llm.complete([{"role": "user", "content": f"one {i}"}], model, config=gateway,
                     temperature=0)
    return batched, time.perf_counter() - started


def bench_overhead(n: int, api_base: str) -> dict:
    import ray

    from rlm_ray.engine import RLM

    model = f"openai/{FANOUT_POLICY}"
    direct = ray.remote(num_cpus=0)(DirectGateway).remote()
    ray.get(direct.run.remote(8, model, api_base))       # warm: litellm import, gateway actors
    RLM(model, api_base=api_base).answer("x", "fanout 8")   # warm: an RLMActor in the pool
    engine, gateway, statuses = [], [], set()
    for _ in range(REPEATS):   # interleaved, medians: the node is shared and noisy
        result = RLM(model, api_base=api_base).answer("x", f"fanout {n}")
        statuses.add(result.status)
        engine.append((result.steps[0]["elapsed_s"], result.steps[1]["elapsed_s"]))
        gateway.append(ray.get(direct.run.remote(n, model, api_base)))
    ray.kill(direct)
    return {"n": n, "status": ",".join(sorted(statuses)),
            "batched_engine": statistics.median(e[0] for e in engine),
            "batched_direct": statistics.median(g[0] for g in gateway), "serial_n": n // 4,
            "serial_engine": statistics.median(e[1] for e in engine),
            "serial_direct": statistics.median(g[1] for g in gateway)}


def run_bench(work: str, copies: int, sub_calls: int, skip_rss: bool) -> int:
    from rlm_ray._ray import ensure_ray
    from rlm_ray.sim import SimServer

    ensure_ray()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print("SIMULATOR answering (zero latency); figures are of the engine, not of a model. "
          f"Load average {load} on {os.cpu_count()} CPUs (a shared node makes timings noisy).")
    with SimServer() as server:
        if not skip_rss:
            rows = bench_rss(Path(work), copies, "openai/sim/rlm-policy", server.base_url)
            print("\n(a) root RLMActor RSS answering a needle question")
            print(f"{'corpus':<12} {'tokens':>13} {'RSS base MB':>12} {'RSS peak MB':>12} "
                  f"{'status':>8} {'answer':>9} {'wall s':>7}")
            for label, tokens, base, peak, status, answer, wall in rows:
                print(f"{label:<12} {tokens:>13,} {base:>12.1f} {peak:>12.1f} {status:>8} "
                      f"{str(answer):>9} {wall:>7.1f}")
            diff = rows[1][3] - rows[0][3]
            verdict = "PASS" if abs(diff) < 100 else "FAIL"
            print(f"peak RSS difference {rows[1][0]} - {rows[0][0]}: {diff:+.1f} MB "
                  f"(target < 100 MB: {verdict})")
        o = bench_overhead(sub_calls, server.base_url)
    print(f"\n(b) engine overhead per sub-call (zero-latency simulator, median of {REPEATS}, "
          f"status {o['status']})")
    print(f"{'path':<34} {'calls':>6} {'engine s':>9} {'gateway s':>10} {'overhead ms/call':>17}")
    for label, n, eng, direct in (("llm_query_batched (one batch)", o["n"], o["batched_engine"],
                                   o["batched_direct"]),
                                  ("llm_query (sequential)", o["serial_n"], o["serial_engine"],
                                   o["serial_direct"])):
        print(f"{label:<34} {n:>6} {eng:>9.3f} {direct:>10.3f} {(eng - direct) / n * 1000:>17.2f}")
    return 0
