"""Exact billing, prompt caching and service tiers, over real HTTP to
the provider SIMULATOR. Expected dollars always come from litellm's own cost
functions (or its table's raw per-token prices), never from rlm-ray's code."""
from __future__ import annotations

import json

import httpx
import pytest

from rlm_ray.llm import complete
from rlm_ray.llm.config import GatewayConfig
from rlm_ray.llm.cost import billed_cost
from rlm_ray.llm.usage import CallUsage
from rlm_ray.sim import register_policy
from rlm_ray.sim.registry import last_user_text

MODEL = "openai/sim/echo"
LONG = "the quick brown fox jumps over the lazy dog. " * 300    # ~2,700 tokens


def _litellm():
    from rlm_ray.llm._litellm import litellm

    return litellm()


def _litellm_own_cost(usage: dict, model: str, service_tier: str | None = None) -> float:
    """litellm.completion_cost on a response carrying exactly this usage."""
    lib = _litellm()
    response = lib.ModelResponse(model=model, usage=lib.Usage(**usage))
    return lib.completion_cost(completion_response=response, model=model, service_tier=service_tier)


def _simulator_bill(server, model: str) -> float:
    """The simulator's own bill of every call it answered, priced by litellm: what
    the calls' billed sum must equal."""
    s = server.stats()
    raw = {"prompt_tokens": s["prompt_tokens"], "completion_tokens": s["completion_tokens"],
           "total_tokens": s["prompt_tokens"] + s["completion_tokens"],
           "prompt_tokens_details": {"cached_tokens": s["cached_tokens"]}}
    return _litellm_own_cost(raw, model)


# ---- 1. billing equals litellm's own calculation -------------------------------------
@pytest.mark.parametrize("model, raw", [
    ("gpt-5-mini", {"prompt_tokens": 10_000, "completion_tokens": 300, "total_tokens": 10_300,
                    "prompt_tokens_details": {"cached_tokens": 8_064},
                    "completion_tokens_details": {"reasoning_tokens": 200}}),
    ("claude-sonnet-4-5", {"prompt_tokens": 10_000, "completion_tokens": 300, "total_tokens": 10_300,
                           "cache_read_input_tokens": 6_000, "cache_creation_input_tokens": 3_000}),
])
def test_billed_cost_is_litellms_own_for_cached_usage(model, raw):
    usage = CallUsage.from_response(raw, prompt_fallback=0, completion_fallback=0, service_tier=None)
    cost = billed_cost(model, usage, GatewayConfig())
    assert cost == pytest.approx(_litellm_own_cost(raw, model), rel=1e-12)
    # ...and it is not the old flat `prompt x input + completion x output` figure.
    entry = _litellm().model_cost[model]
    flat = 10_000 * entry["input_cost_per_token"] + 300 * entry["output_cost_per_token"]
    assert abs(cost - flat) > 0.1 * flat


def test_user_price_table_bills_cached_reads_and_writes():
    prices = {"input_per_1m": 2.0, "output_per_1m": 8.0, "cached_input_per_1m": 0.5,
              "cache_write_per_1m": 2.5}
    config = GatewayConfig(prices={"my-model": prices})
    custom = {"input_cost_per_token": 2e-6, "output_cost_per_token": 8e-6,
              "cache_read_input_token_cost": 5e-7, "cache_creation_input_token_cost": 2.5e-6}
    lib = _litellm()
    # OpenAI-style usage: litellm's custom-price path is the reference.
    usage = CallUsage(10_000, 300, cached_tokens=8_000)
    expected = sum(lib.cost_per_token(model="my-model", prompt_tokens=10_000, completion_tokens=300,
                                      usage_object=usage.litellm_usage(),
                                      custom_cost_per_token=custom))
    assert billed_cost("my-model", usage, config) == pytest.approx(expected, rel=1e-12)
    # Anthropic-style usage (reads + writes inside prompt_tokens): the table's rates, by hand.
    written = CallUsage(10_000, 300, cached_tokens=6_000, cache_write_tokens=3_000)
    by_hand = 1_000 * 2e-6 + 6_000 * 5e-7 + 3_000 * 2.5e-6 + 300 * 8e-6
    assert billed_cost("my-model", written, config) == pytest.approx(by_hand, rel=1e-12)
    # The user's table wins over litellm's, and an unknown model stays None (never 0).
    assert billed_cost("gpt-5-mini", usage, GatewayConfig(prices={"gpt-5-mini": prices})) == \
        pytest.approx(expected, rel=1e-12)
    assert billed_cost("nobody-priced-this", usage, GatewayConfig()) is None


def test_price_table_rejects_unknown_keys():
    from rlm_ray.errors import UserError

    with pytest.raises(UserError, match="cached_input_per_1m"):
        GatewayConfig(prices={"m": {"input_per_1m": 1, "output_per_1m": 2, "cache_per_1m": 3}})


# ---- the simulator bills caching like each provider family ------------------------------
def _post(server, body: dict) -> dict:
    response = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def _conversation(turns: int) -> list[dict]:
    messages = [{"role": "system", "content": LONG}, {"role": "user", "content": "question"}]
    for turn in range(turns):
        messages += [{"role": "assistant", "content": f"reply {turn}"},
                     {"role": "user", "content": f"output {turn} " + LONG[: 600 * (turn + 1)]}]
    return messages


def _marked(messages: list[dict], *indices: int) -> list[dict]:
    out = [dict(m) for m in messages]
    for i in indices:
        out[i]["content"] = [{"type": "text", "text": out[i]["content"],
                              "cache_control": {"type": "ephemeral"}}]
    return out


@pytest.mark.timeout(60)
def test_simulator_automatic_caching_min_prefix_and_increments(sim):
    server = sim(bill_like={"sim/echo": "gpt-5-mini"}, cache_replicas=1)
    short = [{"role": "user", "content": "hello there"}]
    first = _post(server, {"model": "sim/echo", "messages": short})
    again = _post(server, {"model": "sim/echo", "messages": short})
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 0     # < 1024 tokens
    one = _conversation(0)
    p_one = _post(server, {"model": "sim/echo", "messages": one})["usage"]
    assert p_one["prompt_tokens_details"]["cached_tokens"] == 0              # never seen
    two = _post(server, {"model": "sim/echo", "messages": _conversation(1)})["usage"]
    prefix = p_one["prompt_tokens"] - 3          # the reply priming is not part of a prefix
    assert prefix >= 1024
    assert two["prompt_tokens_details"]["cached_tokens"] == 1024 + (prefix - 1024) // 128 * 128
    assert "cache_creation_input_tokens" not in two
    assert first["usage"]["prompt_tokens"] == again["usage"]["prompt_tokens"]
    stats = server.stats()
    assert stats["cached_tokens"] == two["prompt_tokens_details"]["cached_tokens"]


@pytest.mark.timeout(60)
def test_simulator_breakpoint_caching_only_at_marks(sim):
    server = sim(bill_like={"sim/echo": "claude-sonnet-4-5"})
    plain = _post(server, {"model": "sim/echo", "messages": _conversation(1)})["usage"]
    plain2 = _post(server, {"model": "sim/echo", "messages": _conversation(2)})["usage"]
    assert plain2["cache_read_input_tokens"] == plain2["cache_creation_input_tokens"] == 0
    one, two = _conversation(1), _conversation(2)
    u1 = _post(server, {"model": "sim/echo", "messages": _marked(one, 0, len(one) - 1)})["usage"]
    assert u1["cache_read_input_tokens"] == 0
    assert u1["cache_creation_input_tokens"] == plain["prompt_tokens"] - 3   # up to the last mark
    u2 = _post(server, {"model": "sim/echo", "messages": _marked(two, 0, len(two) - 1)})["usage"]
    assert u2["cache_read_input_tokens"] == u1["cache_creation_input_tokens"]
    assert u2["cache_creation_input_tokens"] == u2["prompt_tokens"] - 3 - u2["cache_read_input_tokens"]
    # Another model name is another cache; an unbilled model reports no caching at all.
    unbilled = _post(server, {"model": "sim/rlm-policy", "messages": _marked(two, 0, len(two) - 1)})
    assert "cache_read_input_tokens" not in unbilled["usage"]


# ---- the gateway: prompt_cache marks and exact cost on a real response --------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("like", ["gpt-5-mini", "claude-sonnet-4-5"])
def test_gateway_cost_equals_litellm_on_the_simulators_usage(sim, like):
    server = sim(bill_like={"sim/echo": like})
    config = GatewayConfig(api_base=server.base_url, price_like={MODEL: like}, shared_limiter=False)
    complete(_conversation(1), MODEL, config=config, prompt_cache="auto")
    server.reset_stats()
    done = complete(_conversation(2), MODEL, config=config, prompt_cache="auto")
    s = server.stats()                      # what the simulator billed, independently
    assert s["cached_tokens"] > 1024 and done.cached_tokens == s["cached_tokens"]
    raw = {"prompt_tokens": s["prompt_tokens"], "completion_tokens": s["completion_tokens"],
           "total_tokens": s["prompt_tokens"] + s["completion_tokens"]}
    if like.startswith("claude"):
        raw.update(cache_read_input_tokens=s["cached_tokens"],
                   cache_creation_input_tokens=s["cache_write_tokens"])
        assert done.cache_write_tokens == s["cache_write_tokens"] > 0
    else:
        raw["prompt_tokens_details"] = {"cached_tokens": s["cached_tokens"]}
    assert done.cost_usd == pytest.approx(_litellm_own_cost(raw, like), rel=1e-9)
    assert done.cache_saved_usd > 0
    # `off` sends neither marks nor a routing key: the same prompt is billed uncached here.
    off = complete(_conversation(2) + [{"role": "user", "content": "x"}], MODEL,
                   config=config, prompt_cache="off")
    if like.startswith("claude"):
        assert off.cached_tokens == 0


# ---- 4. --service-tier flex reaches the provider and halves the price --------------------
@pytest.mark.timeout(120)
def test_service_tier_flex_is_sent_recorded_and_half_price(sim):
    server = sim(bill_like={"sim/echo": "gpt-5-mini"})
    base = GatewayConfig(api_base=server.base_url, price_like={MODEL: "gpt-5-mini"},
                         shared_limiter=False)
    messages = [{"role": "user", "content": "price me " + LONG[:400]}]
    standard = complete(messages, MODEL, config=base)
    flex = complete(messages, MODEL, config=base.with_(service_tier="flex"))
    assert server.stats()["service_tiers"] == {"flex": 1, "none": 1}
    assert flex.service_tier == "flex" and standard.service_tier is None
    entry = _litellm().model_cost["gpt-5-mini"]
    assert entry["input_cost_per_token_flex"] == entry["input_cost_per_token"] / 2   # litellm's table
    assert (flex.prompt_tokens, flex.completion_tokens) == (standard.prompt_tokens,
                                                            standard.completion_tokens)
    assert flex.cost_usd == pytest.approx(standard.cost_usd / 2, rel=1e-9)


@pytest.mark.timeout(180)
def test_query_cli_passes_service_tier_and_records_it(sim, tmp_path, capsys):
    from rlm_ray.cli import main

    server = sim(bill_like={"sim/rlm-policy": "gpt-5-mini"})
    text = tmp_path / "input.txt"
    text.write_text("nothing useful here\n")
    trajectory = tmp_path / "t.json"
    code = main(["query", "Recover from a typo: what is 6 times 7?", "--text", str(text),
                 "--model", "openai/sim/rlm-policy", "--api-base", server.base_url, "--local",
                 "--service-tier", "flex", "--price-like", "gpt-5-mini",
                 "--trajectory", str(trajectory)])
    assert code == 0 and capsys.readouterr().out.strip() == "42"
    calls = json.loads(trajectory.read_text())["calls"]
    assert calls and all(c["service_tier"] == "flex" and c["cost_usd"] > 0 for c in calls)
    assert server.stats()["service_tiers"] == {"flex": len(calls)}


@pytest.mark.timeout(300)
def test_in_process_simulator_bills_caching_like_the_price_entry(tmp_path, capsys):
    """`--model sim --price-like gpt-5-mini`: the simulator the CLI starts reports
    cached tokens the way that entry's provider does, so the bill uses them."""
    from rlm_ray.cli import main

    records = "\n".join(f"record {i:07d} | user u{i % 7} | label: {'eggs' if i % 3 else 'ham'} | "
                         + "filler " * 30 for i in range(600))
    text = tmp_path / "records.txt"
    text.write_text(records + "\n")
    runs = {}
    for extra in ([], ["--price-like", "gpt-5-mini"]):
        trajectory = tmp_path / f"t{len(extra)}.json"
        code = main(["query", "How many records are labelled 'ham'?", "--text", str(text),
                     "--model", "sim", "--local", "--trajectory", str(trajectory), *extra])
        assert code == 0 and capsys.readouterr().out.strip() == "200"
        runs[bool(extra)] = json.loads(trajectory.read_text())["calls"]
    roots = [c for c in runs[True] if c["kind"] == "root"]
    assert len(roots) >= 4 and sum(c["cached_tokens"] for c in roots[2:]) > 1024
    assert all(c["cost_usd"] is not None for c in runs[True])
    # Without an entry: no caching reported and no price known (n/a, never 0).
    assert all(c["cached_tokens"] == 0 and c["cost_usd"] is None for c in runs[False])


# ---- 3. a dollar budget stops at the exact billed amount, caching on ----------------------
@register_policy("test/cost-grow")
def grow(messages):
    """Root turns that never finish and print ~800 tokens each: a growing, cacheable history."""
    if last_user_text(messages).startswith("Final answer required"):
        return "FINAL(forced)"
    turn = sum(1 for m in messages if m["role"] == "assistant") + 1
    return f"Turn {turn}.\n```repl\nanswer['content'] = 'partial-{turn}'\nprint('row ' * 800)\n```"


@pytest.mark.timeout(300)
def test_dollar_budget_stops_at_the_exact_billed_amount_with_caching(ray_session, sim):
    from rlm_ray.engine import RLM
    from rlm_ray.llm.cost import price_for
    from rlm_ray.llm.limiter import DEFAULT_OUTPUT_TOKENS

    server = sim(bill_like={"test/cost-grow": "gpt-5-mini"})
    model = "openai/test/cost-grow"
    gateway = GatewayConfig(price_like={model: "gpt-5-mini"}, prompt_cache="auto")
    limit = 0.012
    result = RLM(model, api_base=server.base_url, budget_usd=limit, max_iterations=200,
                 gateway=gateway, local=True).answer(LONG, "grow until the money runs out")
    assert result.status == "budget_exceeded" and result.answer.startswith("partial-")
    roots = [c for c in result.calls if c["kind"] == "root"]
    billed = sum(c["cost_usd"] for c in roots)
    assert sum(c["cached_tokens"] for c in roots) > 0          # caching was really billed
    assert billed == pytest.approx(_simulator_bill(server, "gpt-5-mini"), rel=1e-9)
    # Stopped within one call of the limit: the refused call's reservation did not fit.
    assert billed <= limit
    biggest = max(c["prompt_tokens"] for c in roots)
    one_call = price_for(model, gateway).worst_case(biggest + 2_000, DEFAULT_OUTPUT_TOKENS)
    assert limit - billed < one_call
    # Without caching the same limit buys fewer turns.
    uncached = RLM(model, api_base=server.base_url, budget_usd=limit, max_iterations=200,
                   gateway=gateway.with_(prompt_cache="off"), local=True).answer(
        LONG + " ", "grow until the money runs out")
    assert uncached.status == "budget_exceeded"
    assert uncached.iterations <= result.iterations


# ---- batch: new columns, summary figures, dry-run estimate ------------------------------
@register_policy("test/cost-three-turns")
def three_turns(messages):
    """Two turns that print ~800 tokens, then FINAL: a cacheable three-turn root loop."""
    turn = sum(1 for m in messages if m["role"] == "assistant") + 1
    if turn >= 3:
        return "```repl\nFINAL('done')\n```"
    return f"Turn {turn}.\n```repl\nprint('row ' * 800)\n```"


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> str:
    from rlm_ray.corpus import ingest

    root = tmp_path_factory.mktemp("cost_corpus")
    (root / "src").mkdir()
    (root / "src" / "a.py").write_text("def a():\n    return 1\n")
    (root / "src" / "b.py").write_text("def b():\n    return 2\n")
    ingest([str(root / "src")], str(root / "corpus"))
    return str(root / "corpus")


def _billed_batch(sim, policy: str, like: str, tmp_path, question: str, n: int,
                  max_iterations: int) -> tuple:
    """(server, model, queries file, RLM settings) for a batch against a simulator
    that bills `policy` like the litellm entry `like`, priced the same way."""
    server = sim(bill_like={policy: like})
    model = f"openai/{policy}"
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps({"query_id": f"q{i}", "question": f"{question} {i}"})
                               + "\n" for i in range(n)))
    gateway = GatewayConfig(api_base=server.base_url, price_like={model: like})
    rlm = {"model": model, "api_base": server.base_url, "max_iterations": max_iterations,
           "gateway": gateway}
    return server, model, str(queries), rlm


@pytest.mark.timeout(300)
def test_batch_records_cache_columns_and_summarises_them(ray_session, sim, tiny_corpus, tmp_path):
    from rlm_ray.batch.progress import summary_rows
    from rlm_ray.batch.runner import run
    from rlm_ray.batch.tables import read_run

    server, model, queries, rlm = _billed_batch(sim, "test/cost-three-turns", "claude-sonnet-4-5",
                                                tmp_path, "question", 2, max_iterations=5)
    out = tmp_path / "out"
    summary = run(tiny_corpus, queries, str(out), rlm=rlm, concurrency=2, progress=False)
    tables = read_run(str(out))
    calls, answers = tables.calls.to_pylist(), tables.answers.to_pylist()
    assert [a["status"] for a in answers] == ["ok", "ok"]
    stats = server.stats()
    assert sum(c["cached_tokens"] for c in calls) == stats["cached_tokens"] > 0
    assert sum(c["cache_write_tokens"] for c in calls) == stats["cache_write_tokens"] > 0
    for answer in answers:
        mine = [c for c in calls if c["query_id"] == answer["query_id"]]
        assert answer["cached_tokens"] == sum(c["cached_tokens"] for c in mine)
        assert answer["cache_saved_usd"] == pytest.approx(sum(c["cache_saved_usd"] for c in mine))
        assert answer["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in mine))
    share = stats["cached_tokens"] / stats["prompt_tokens"]
    assert summary.cost["cached_share"] == pytest.approx(share)
    rows = dict(summary_rows(summary))
    assert rows["cached input share"] == f"{share:.1%}"
    assert rows["dry-run estimate"].startswith("$")


def test_dry_run_prices_tier_and_caching(tmp_path, capsys, tiny_corpus):
    from rlm_ray.cli import main

    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"query_id": "a", "question": "q?"}) + "\n")
    base = ["run", tiny_corpus, "--queries", str(queries), "--out", str(tmp_path / "o"),
            "--dry-run", "--model", "gpt-5-mini", "--calls-per-question", "4"]

    def estimate(*extra: str) -> float:
        assert main(base + list(extra)) == 0
        out = capsys.readouterr().out
        return float(next(line for line in out.splitlines() if "estimated_cost_usd" in line).split()[-1])

    off, auto = estimate("--prompt-cache", "off"), estimate()
    flex = estimate("--prompt-cache", "off", "--service-tier", "flex")
    assert auto < off and flex == pytest.approx(off / 2, abs=1e-4)
    assert not (tmp_path / "o").exists()


@pytest.mark.timeout(400)
def test_batch_budget_stops_at_the_billed_amount_with_caching(ray_session, sim, tiny_corpus,
                                                              tmp_path):
    from rlm_ray.batch.runner import run
    from rlm_ray.batch.tables import read_run
    from rlm_ray.llm.cost import price_for
    from rlm_ray.llm.limiter import DEFAULT_OUTPUT_TOKENS

    server, model, queries, rlm = _billed_batch(sim, "test/cost-grow", "gpt-5-mini", tmp_path,
                                                "grow", 3, max_iterations=200)
    limit = 0.006
    summary = run(tiny_corpus, queries, str(tmp_path / "out"), rlm=rlm, concurrency=1,
                  progress=False, budget_usd=limit)
    assert summary.budget_stopped
    calls = read_run(str(tmp_path / "out")).calls.to_pylist()
    billed = sum(c["cost_usd"] for c in calls)
    assert sum(c["cached_tokens"] for c in calls) > 0
    assert billed == pytest.approx(_simulator_bill(server, "gpt-5-mini"), rel=1e-9)
    assert billed <= limit
    one_call = price_for(model, rlm["gateway"]).worst_case(
        max(c["prompt_tokens"] for c in calls) + 2_000, DEFAULT_OUTPUT_TOKENS)
    assert limit - billed < one_call
    assert summary.cost_usd == pytest.approx(billed)


def test_pipeline_spec_sets_service_tier_and_prompt_cache(tmp_path):
    from rlm_ray.batch.pipeline import load_spec, rlm_from_spec
    from rlm_ray.errors import UserError

    spec_path = tmp_path / "spec.yaml"
    body = ("name: nightly\nsources: [src]\ncorpus: c\noutput: {out}\nquestions: q.jsonl\n"
            "model: openai/my-proxy-model\nservice_tier: {tier}\nprompt_cache: 'off'\n"
            "price_like: gpt-5-mini\n")
    spec_path.write_text(body.format(out=tmp_path / "out", tier="flex"))
    rlm, server, _ = rlm_from_spec(load_spec(str(spec_path)), str(tmp_path / "out" / "p"))
    assert server is None
    gateway = rlm["gateway"]
    assert (gateway.service_tier, gateway.prompt_cache) == ("flex", "off")
    assert gateway.price_like == {"openai/my-proxy-model": "gpt-5-mini"}
    spec_path.write_text(body.format(out=tmp_path / "out", tier="cheapest"))
    with pytest.raises(UserError, match="service_tier"):
        rlm_from_spec(load_spec(str(spec_path)), str(tmp_path / "out" / "p"))
