"""One question can never hurt another through the corpus: two questions
share one RLM host actor (two root loops in one process), real Ray, the real
sandbox, litellm over HTTP to the SIMULATOR whose root policies are test-only
scripts registered here. One question's corpus query builds a value of
gigabytes (with a function that is on no amplifier list), or runs a legal
heavy GROUP BY; the other question's small queries still succeed, its model
calls are not repeated, and the host process is the same one throughout."""
from __future__ import annotations

import re
import uuid

import pytest

from fixtures.codebase import text_files
from rlm_ray.engine import RLM
from rlm_ray.sim import register_policy

# replace() is not size-guarded: 64 K characters, each replaced by 64 K, is one
# value of 4 G characters (the old host built it in its own memory and died).
ATTACK = "SELECT length(replace(repeat('x', 65536), 'x', repeat('y', 65536))) AS n"
HEAVY_GROUPS = 1_000_003
HEAVY = (f"SELECT count(*) AS groups FROM (SELECT i % {HEAVY_GROUPS} AS k, count(*) AS n "
         f"FROM range(8000000) t(i) GROUP BY k)")


def _is_root(messages):
    return any(m.get("role") == "system" for m in messages)


def _outputs(messages):
    return [m["content"] for m in messages
            if m["role"] == "user" and m["content"].startswith("REPL output")]


def _repl(code: str) -> str:
    return f"Next step.\n```repl\n{code}\n```"


def _one_query_then_final(query: str):
    def policy(messages):
        if not _is_root(messages):
            return "sub"
        if not _outputs(messages):
            return _repl("try:\n"
                         f"    seen = 'rows ' + str(context.sql({query!r}))\n"
                         "except Exception as e:\n"
                         "    seen = 'refused: ' + str(e)\n"
                         "print(seen)")
        return _repl("FINAL_VAR('seen')")
    return policy


register_policy("test/qi-attacker")(_one_query_then_final(ATTACK))
register_policy("test/qi-heavy")(_one_query_then_final(HEAVY))


@register_policy("test/qi-small")
def small(messages):
    """Three turns of small corpus calls, a few seconds apart (they overlap
    the other question's query), then the answer built from them."""
    if not _is_root(messages):
        return "sub"
    turn = len(_outputs(messages))
    if turn == 0:
        return _repl("import time\nhits = context.grep('import json', limit=5, regex=False)\n"
                     "time.sleep(2)\nprint(len(hits))")
    if turn == 1:
        return _repl("head = context.read('shlex.py', 0, 1)\n"
                     "n = context.sql('SELECT count(*) AS n FROM docs')[0]['n']\n"
                     "first = context[0][:20]\ntime.sleep(2)\nprint(n)")
    return _repl("FINAL(f'{len(hits)}|{n}|{head.strip()}|{len(first)}')")


@pytest.fixture(scope="module")
def corpus(stdlib_subset, tmp_path_factory):
    from rlm_ray.corpus import Corpus, ingest

    out = tmp_path_factory.mktemp("isolation") / "corpus"
    ingest([str(stdlib_subset)], str(out), chunk_tokens=500)
    return Corpus.open(str(out))


def _expected_small(stdlib_subset) -> str:
    files = text_files(stdlib_subset)
    matching = sum(1 for text in files.values() for line in text.split("\n")
                   if "import json" in line.lower())
    return f"{min(5, matching)}|{len(files)}|{files['shlex.py'].splitlines()[0].strip()}|20"


def _two_questions_on_one_host(server, corpus, other_model: str):
    """(small result, other result, host pid before, host pid after)."""
    import ray

    from rlm_ray.engine.actor import NAMESPACE, RLMActor

    host = RLMActor.options(namespace=NAMESPACE, name=f"rlm-root-qi-{uuid.uuid4().hex[:6]}").remote()
    try:
        before = ray.get(host.pid.remote(), timeout=120)
        rlms = {model: RLM(f"openai/{model}", api_base=server.base_url, max_iterations=6)
                for model in ("test/qi-small", other_model)}
        specs = {model: rlm.plan() for model, rlm in rlms.items()}
        refs = {model: host.answer.remote(corpus, f"question for {model}", f"qi-{i}", specs[model])
                for i, model in enumerate([other_model, "test/qi-small"])}
        results = {model: ray.get(ref, timeout=600) for model, ref in refs.items()}
        after = ray.get(host.pid.remote(), timeout=60)
        for spec in specs.values():
            spec.budget.close()
        return results["test/qi-small"], results[other_model], before, after
    finally:
        ray.kill(host)


def _paid_once(server, *results) -> None:
    stats = server.stats()
    assert stats["repeated_prompts"] == 0, stats        # no model call was paid twice
    assert stats["requests"] == sum(len(r.calls) for r in results), stats


@pytest.mark.timeout(600)
def test_a_runaway_query_costs_its_worker_not_the_host_or_the_other_question(
        ray_session, sim, corpus, stdlib_subset):
    server = sim()
    small_result, attacker, before, after = _two_questions_on_one_host(
        server, corpus, "test/qi-attacker")
    assert before == after                                   # the host survived
    assert (small_result.status, small_result.answer) == ("ok", _expected_small(stdlib_subset))
    assert [c["kind"] for c in small_result.calls] == ["root"] * 3
    assert attacker.status == "ok"
    assert re.match(r"refused: (CorpusQueryError: )?query used more than \d+ MB of memory",
                    attacker.answer), attacker.answer
    _paid_once(server, small_result, attacker)


@pytest.mark.timeout(600)
def test_a_legal_heavy_query_does_not_starve_a_small_one(ray_session, sim, corpus, stdlib_subset):
    server = sim()
    small_result, heavy, before, after = _two_questions_on_one_host(server, corpus, "test/qi-heavy")
    assert before == after
    assert (small_result.status, small_result.answer) == ("ok", _expected_small(stdlib_subset))
    assert (heavy.status, heavy.answer) == ("ok", f"rows [{{'groups': {HEAVY_GROUPS}}}]")
    _paid_once(server, small_result, heavy)
