"""`rlm-ray bench engine`: two figures of the engine itself (not of a model).

(a) Root-actor memory is flat in corpus size: PSS of an RLMActor (psutil on
    its pid, sampled while it answers a needle question) over the stdlib
    (~10M tokens) vs the stdlib ingested `copies` times under different
    prefixes (~100M tokens). The corpus stays in Parquet/DuckDB; the actor
    holds metadata and the rows its code asked for.
(b) Per-sub-call engine overhead against a zero-latency SIMULATOR: N sub-calls
    via `llm_query_batched` inside the REPL (sandbox bridge, budget checks,
    lineage rows) vs the same N calls straight through the gateway; and N
    sequential `llm_query` calls vs N sequential gateway calls.
(c) `--iterate`: model code walks every document of the stdlib corpus
    (`for doc in context: total += len(doc)`); the total must equal the
    corpus's own `characters` stat, and the peak PSS of the root actor and of
    its sandbox processes must grow by < 100 MB over an idle REPL on the
    same corpus (documents stream through in bounded batches).
Memory is PSS, the metric of every benchmark (rlm_ray.bench.memory).
"""
from __future__ import annotations

import os
import statistics
import sysconfig
import threading
import time
from pathlib import Path

from rlm_ray.bench.memory import pss_bytes
from rlm_ray.sim import register_policy
from rlm_ray.sim.registry import root_question

STDLIB_EXCLUDE = ["site-packages/", "__pycache__/", "*.pyc"]
NEEDLE_KEY, NEEDLE_VALUE = "BENCH-KEY", "7781-ZZ"
FANOUT_POLICY = "bench/fanout"
ITERATE_POLICY = "bench/iterate"
IDLE_SECONDS = 1.5            # the idle REPL lives this long, so its PSS is sampled
SAMPLE_S = 0.05               # PSS reads smaps_rollup: a few per second per process
GROWTH_LIMIT_MB = 100
REPEATS = 3


@register_policy(FANOUT_POLICY)
def _fanout(messages: list[dict]) -> str:
    """Root: one block of N batched sub-calls, one of N sequential ones, then FINAL.
    Question: `fanout N`. Sub-calls: a fixed short reply."""
    if not any(m.get("role") == "system" for m in messages):
        return "ok"
    n = int(root_question(messages).split()[-1])
    if len([m for m in messages if m["role"] == "user"]) > 1:
        return "```repl\nFINAL(str(len(batched) + len(serial)))\n```"
    return ("```repl\nbatched = llm_query_batched([f'item {i}' for i in range(%d)])\n```\n"
            "```repl\nserial = [llm_query(f'one {i}') for i in range(%d)]\n```" % (n, n // 4))


@register_policy(ITERATE_POLICY)
def _iterate(messages: list[dict]) -> str:
    """Root, question `idle`: an idle REPL for IDLE_SECONDS, then FINAL. Question
    `iterate`: one block reading every document, FINAL with the figures."""
    if root_question(messages).endswith("idle"):
        return f"```repl\nimport time\ntime.sleep({IDLE_SECONDS})\nFINAL('idle')\n```"
    return ("```repl\nimport time\nstarted = time.perf_counter()\ntotal = n = 0\n"
            "for doc in context:\n    total += len(doc)\n    n += 1\n"
            "seconds = time.perf_counter() - started\nstats = context.stats\n"
            "FINAL(f\"{n} {total} {stats['documents']} {stats['characters']} {seconds:.3f}\")\n```")


def _ingest_once(out: Path, sources: list[str]) -> str:
    from rlm_ray.corpus import ingest

    if not (out / "manifest.json").exists():
        print(f"ingesting {len(sources)} source(s) into {out} (cached for later runs) ...",
              flush=True)
        ingest(sources, str(out), exclude=STDLIB_EXCLUDE)
    return str(out)


def _corpora(work: Path, copies: int) -> tuple[str, str]:
    small = _corpora_1x(work)
    stdlib = sysconfig.get_paths()["stdlib"]
    large = _ingest_once(work / f"corpus-{copies}x", [stdlib] * copies + [str(work / "needle")])
    return small, large


def _actor_pss(rlm, corpus, question: str) -> dict:
    """Baseline and peak PSS of a fresh RLMActor answering `question`."""
    import psutil
    import ray

    from rlm_ray.engine.actor import RLMActor

    actor = RLMActor.remote()
    try:
        proc = psutil.Process(ray.get(actor.pid.remote()))
        baseline = pss_bytes(proc)
        spec = rlm.plan()
        ref = actor.answer.remote(corpus, question, "bench-rss", spec)
        peak, done = baseline, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, pss_bytes(proc))
                time.sleep(SAMPLE_S)

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


def bench_pss(work: Path, copies: int, model: str, api_base: str) -> list[tuple]:
    from rlm_ray.corpus import Corpus
    from rlm_ray.engine import RLM

    small_uri, large_uri = _corpora(work, copies)
    rlm = RLM(model, api_base=api_base)
    question = f"What is the secret code for {NEEDLE_KEY}?"
    rows = []
    for label, uri in (("1x stdlib", small_uri), (f"{copies}x stdlib", large_uri)):
        corpus = Corpus.open(uri)
        m = _actor_pss(rlm, corpus, question)
        rows.append((label, len(corpus), m["baseline"] / 2**20, m["peak"] / 2**20,
                     m["status"], m["answer"], m["wall_s"]))
    return rows


def _peaks_while(proc, ref) -> tuple[object, float, float]:
    """(result, actor peak PSS MB, sandbox peak PSS MB) while `ref` runs; the
    sandbox is every process under the actor (its worker, bwrap if used)."""
    import psutil
    import ray

    peaks, done = [0, 0], threading.Event()

    def children_pss() -> int:
        total = 0
        for child in proc.children(recursive=True):
            try:
                total += pss_bytes(child)
            except psutil.Error:      # exited between listing and reading
                pass
        return total

    def sample() -> None:
        while not done.is_set():
            peaks[0] = max(peaks[0], pss_bytes(proc))
            peaks[1] = max(peaks[1], children_pss())
            time.sleep(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = ray.get(ref)
    finally:
        done.set()
        sampler.join()
    return result, peaks[0] / 2**20, peaks[1] / 2**20


def bench_iterate(work: Path, api_base: str) -> dict:
    """(c): an idle REPL, then a REPL iterating every document, in one fresh actor."""
    import psutil
    import ray

    from rlm_ray.corpus import Corpus
    from rlm_ray.engine import RLM
    from rlm_ray.engine.actor import RLMActor

    corpus = Corpus.open(_corpora_1x(work))
    rlm = RLM(f"openai/{ITERATE_POLICY}", api_base=api_base, max_iterations=2)
    actor = RLMActor.remote()
    figures: dict = {"tokens": len(corpus), "documents": corpus.stats["documents"],
                     "bytes": corpus.stats["bytes"]}
    try:
        proc = psutil.Process(ray.get(actor.pid.remote()))
        for phase in ("idle", "iterate"):
            spec = rlm.plan()
            ref = actor.answer.remote(corpus, f"bench {phase}", f"bench-{phase}", spec)
            result, actor_mb, sandbox_mb = _peaks_while(proc, ref)
            spec.budget.close()
            figures[phase] = {"status": result.status, "answer": result.answer,
                              "actor_mb": actor_mb, "sandbox_mb": sandbox_mb,
                              "error": result.error}
    finally:
        ray.kill(actor)
    return figures


def _corpora_1x(work: Path) -> str:
    stdlib = sysconfig.get_paths()["stdlib"]
    needle = work / "needle"
    needle.mkdir(parents=True, exist_ok=True)
    (needle / "notes.txt").write_text(f"The secret code for {NEEDLE_KEY} is {NEEDLE_VALUE}.\n")
    return _ingest_once(work / "corpus-1x", [stdlib, str(needle)])


def print_iterate(f: dict) -> None:
    print(f"\n(c) model code iterating every document of the stdlib corpus "
          f"({f['documents']:,} documents, {f['tokens']:,} tokens, {f['bytes']:,} bytes)")
    idle, it = f["idle"], f["iterate"]
    if it["status"] != "ok" or not it["answer"]:
        print(f"iterate run ended {it['status']}: {it['error']}")
        return
    n, total, documents, characters, seconds = it["answer"].split()
    equal = (n, total) == (documents, characters)
    print(f"iterated {int(n):,} documents, {int(total):,} characters in {float(seconds):.1f} s; "
          f"context.stats: {int(documents):,} documents, {int(characters):,} characters "
          f"-> {'EQUAL' if equal else 'DIFFERENT'}")
    print(f"{'peak PSS MB':<22} {'idle REPL':>10} {'iterating':>10} {'growth':>8}")
    verdicts = []
    for label, key in (("root RLMActor", "actor_mb"), ("sandbox processes", "sandbox_mb")):
        growth = it[key] - idle[key]
        verdicts.append(growth < GROWTH_LIMIT_MB)
        print(f"{label:<22} {idle[key]:>10.1f} {it[key]:>10.1f} {growth:>+8.1f}")
    ok = all(verdicts) and equal
    print(f"growth target < {GROWTH_LIMIT_MB} MB each, totals equal: {'PASS' if ok else 'FAIL'}")


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


def run_bench(work: str, copies: int, sub_calls: int, skip_rss: bool,
              iterate: bool = False) -> int:
    from rlm_ray._ray import ensure_ray
    from rlm_ray.sim import SimServer

    ensure_ray()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print("SIMULATOR answering (zero latency); figures are of the engine, not of a model. "
          f"Load average {load} on {os.cpu_count()} CPUs (a shared node makes timings noisy).")
    with SimServer() as server:
        if iterate:
            print_iterate(bench_iterate(Path(work), server.base_url))
            return 0
        if not skip_rss:
            rows = bench_pss(Path(work), copies, "openai/sim/rlm-policy", server.base_url)
            print("\n(a) root RLMActor PSS answering a needle question")
            print(f"{'corpus':<12} {'tokens':>13} {'PSS base MB':>12} {'PSS peak MB':>12} "
                  f"{'status':>8} {'answer':>9} {'wall s':>7}")
            for label, tokens, base, peak, status, answer, wall in rows:
                print(f"{label:<12} {tokens:>13,} {base:>12.1f} {peak:>12.1f} {status:>8} "
                      f"{str(answer):>9} {wall:>7.1f}")
            diff = rows[1][3] - rows[0][3]
            verdict = "PASS" if abs(diff) < 100 else "FAIL"
            print(f"peak PSS difference {rows[1][0]} - {rows[0][0]}: {diff:+.1f} MB "
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
