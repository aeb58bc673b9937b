"""Gateway pieces that need no HTTP: the limiter's schedule, budget atomicity,
cache keys, cost and context windows against litellm's own tables, and the
retry classification of litellm's exception family."""
from __future__ import annotations

import bisect
import json
import pickle
import threading

import pytest

from rlm_ray.errors import UserError
from rlm_ray.llm import Budget, BudgetExceeded, GatewayConfig, LLMError
from rlm_ray.llm.cache import ResponseCache, cache_key, should_cache
from rlm_ray.llm.limiter import Limits, RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def max_in_window(times: list[float], weights: list[float], window: float) -> float:
    """Largest total weight inside any half-open window (t - window, t]."""
    order = sorted(zip(times, weights))
    ts = [t for t, _ in order]
    prefix = [0.0]
    for _, w in order:
        prefix.append(prefix[-1] + w)
    best = 0.0
    for i, t in enumerate(ts):
        lo = bisect.bisect_right(ts, t - window)
        best = max(best, prefix[i + 1] - prefix[lo])
    return best


def book_one(limiter: RateLimiter, clock: FakeClock, prompt_tokens: int = 10) -> tuple[float, float]:
    """What a client does: ask, sleep until told, ask again until booked."""
    while True:
        booking = limiter.reserve(prompt_tokens)
        clock.now = max(clock.now, booking.at)
        if booking.booked:
            return booking.at, booking.estimated_tokens


def book_all(limiter: RateLimiter, clock: FakeClock, n: int) -> list[float]:
    """n callers asking at the same moment, each re-asking when quoted (heap of wake-ups)."""
    import heapq

    start, go = clock.now, []
    wakeups = [(start, i) for i in range(n)]
    heapq.heapify(wakeups)
    while wakeups:
        when, i = heapq.heappop(wakeups)
        clock.now = max(clock.now, when)
        booking = limiter.reserve(10)
        if booking.booked:
            go.append(booking.at)
        else:
            heapq.heappush(wakeups, (booking.at, i))
    return sorted(go)


def test_schedule_never_exceeds_a_sliding_window_and_uses_most_of_it():
    clock = FakeClock()
    limiter = RateLimiter(Limits(rpm=1200, tpm=None, window_s=60), clock=clock)
    go = book_all(limiter, clock, 3000)                 # everyone asks at once
    assert max_in_window(go, [1] * len(go), 60) <= 1200
    achieved = (len(go) - 1) / (go[-1] - go[0]) * 60
    assert achieved / 1200 >= 0.96


def test_idle_then_burst_stays_under_the_window():
    # A full bucket after idling must not add a second window's worth of burst.
    clock = FakeClock()
    limiter = RateLimiter(Limits(rpm=100, tpm=None, window_s=10), clock=clock)
    go = book_all(limiter, clock, 150)
    clock.now = go[-1] + 5.0                       # idle for half a window
    go += book_all(limiter, clock, 150)
    assert max_in_window(go, [1] * len(go), 10) <= 100


def test_token_limit_with_estimates_corrected_by_usage():
    clock = FakeClock()
    limiter = RateLimiter(Limits(rpm=None, tpm=10_000, window_s=60), clock=clock)
    go, charged = [], []
    for i in range(400):
        at, estimate = book_one(limiter, clock, prompt_tokens=50)   # no max_tokens: learned output
        actual = 50 + (20 + i % 30)
        limiter.settle(estimate, actual, actual - 50)
        go.append(at)
        charged.append(actual)
    # Estimates start high (256 output tokens) and learn the real ~35.
    assert limiter.estimate_tokens(50, None) < 100
    assert max_in_window(go[50:], charged[50:], 60) <= 10_000


def test_penalty_pauses_everyone_slows_down_then_recovers():
    clock = FakeClock()
    limiter = RateLimiter(Limits(rpm=600, tpm=None, window_s=60), clock=clock)
    book_one(limiter, clock)
    limiter.penalize(3.0)
    limiter.penalize(3.0)          # the same storm: one episode
    assert limiter.factor == pytest.approx(0.8)
    assert limiter.penalties == 1
    assert limiter.reserve().at >= clock.now + 3.0
    clock.now += 3.0 + 60.0        # a clean window later the rate is back
    book_one(limiter, clock)
    assert limiter.factor == 1.0


def test_budget_reservations_are_atomic_under_threads():
    budget = Budget(tokens=1000)
    granted, refused = [], []

    def worker():
        for _ in range(50):
            try:
                granted.append(budget.reserve(usd=None, tokens=7, calls=1))
            except BudgetExceeded as exc:
                refused.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 1000 // 7
    assert all(exc.kind == "tokens" for exc in refused)
    for reservation in granted:
        budget.settle(reservation, usd=None, tokens=7, calls=1)
    assert budget.remaining()["tokens"] == pytest.approx(1000 - 7 * len(granted))


def test_budget_exceeded_and_llm_error_survive_pickling():
    exc = pickle.loads(pickle.dumps(BudgetExceeded("usd", 1.0, 0.9, 0.2)))
    assert (exc.kind, exc.limit) == ("usd", 1.0) and "budget exceeded (usd)" in str(exc)
    err = pickle.loads(pickle.dumps(LLMError("m: auth", model="m", kind="auth", retries=0)))
    assert (err.kind, err.model, str(err)) == ("auth", "m", "m: auth")


def test_unknown_price_counts_tokens_and_calls_but_not_dollars():
    budget = Budget(usd=0.01, calls=2)
    budget.reserve(usd=None, tokens=10)
    budget.reserve(usd=None, tokens=10)
    with pytest.raises(BudgetExceeded) as info:
        budget.reserve(usd=None, tokens=10)
    assert info.value.kind == "calls"
    assert budget.remaining()["usd"] == pytest.approx(0.01)


def test_cache_key_covers_output_params_only():
    msgs = [{"role": "user", "content": "hi"}]
    base = cache_key("m", msgs, {"temperature": 0})
    assert base == cache_key("m", msgs, {"temperature": 0, "api_key": "sk-secret", "timeout": 3,
                                         "api_base": "http://elsewhere"})
    for changed in ({"temperature": 0.5}, {"temperature": 0, "max_tokens": 5},
                    {"temperature": 0, "seed": 1}, {"temperature": 0, "stop": ["x"]}):
        assert cache_key("m", msgs, changed) != base
    assert cache_key("m2", msgs, {"temperature": 0}) != base
    assert should_cache("auto", {"temperature": 0}) and should_cache("auto", {"seed": 3})
    assert not should_cache("auto", {}) and should_cache("always", {}) and not should_cache("off", {"temperature": 0})


def test_local_cache_round_trip_and_damaged_entry_is_a_miss(tmp_path):
    cache = ResponseCache(str(tmp_path / "cache"))
    key = cache_key("m", [{"role": "user", "content": "x"}], {})
    assert cache.get(key) is None
    cache.put(key, {"text": "y"})
    assert cache.get(key) == {"text": "y"}
    (tmp_path / "cache" / key[:2] / f"{key}.json").write_text("{not json")
    assert cache.get(key) is None
    assert not [p for p in (tmp_path / "cache").rglob(".tmp-*")]


def test_cost_matches_litellm_and_user_prices_and_unknown_is_none():
    import litellm

    from rlm_ray.llm.cost import context_window, cost_usd

    config = GatewayConfig(prices={"my/model": {"input_per_1m": 2.0, "output_per_1m": 8.0}})
    for model in ("openai/gpt-4o-mini", "gpt-4o-mini", "openai/gpt-5-mini"):
        prompt, completion = litellm.cost_per_token(model=model, prompt_tokens=1234, completion_tokens=567)
        assert cost_usd(model, 1234, 567, config) == pytest.approx(prompt + completion, rel=1e-12)
    assert cost_usd("my/model", 1_000_000, 500_000, config) == pytest.approx(6.0)
    assert cost_usd("openai/sim/echo", 10, 10, config) is None
    assert context_window("openai/gpt-4o-mini") == litellm.get_model_info("openai/gpt-4o-mini")["max_input_tokens"]
    assert context_window("openai/sim/echo") is None
    assert context_window("openai/sim/echo", GatewayConfig(context_windows={"openai/sim/echo": 8000})) == 8000


def test_retry_classification_of_litellm_errors():
    import httpx
    import litellm

    from rlm_ray.llm.retry import classify

    response = httpx.Response(429, headers={"retry-after": "2.5"},
                              request=httpx.Request("POST", "http://x"))
    rate = litellm.RateLimitError("slow down", llm_provider="openai", model="m", response=response)
    assert (classify(rate).retryable, classify(rate).kind) == (True, "rate_limit")
    cases = {
        litellm.ContextWindowExceededError("too long", model="m", llm_provider="openai"): (False, "context_length"),
        litellm.AuthenticationError("bad key sk-abcdef123456", llm_provider="openai", model="m"): (False, "auth"),
        litellm.BadRequestError("bad", model="m", llm_provider="openai"): (False, "bad_request"),
        litellm.InternalServerError("boom", llm_provider="openai", model="m"): (True, "server_error"),
        litellm.Timeout("slow", model="m", llm_provider="openai"): (True, "timeout"),
        ValueError("our own bug"): (False, "internal"),
    }
    for exc, verdict in cases.items():
        assert (classify(exc).retryable, classify(exc).kind) == verdict, exc
    assert "sk-abcdef123456" not in classify(
        litellm.AuthenticationError("bad key sk-abcdef123456", llm_provider="openai", model="m")).reason


def test_config_rejects_bad_values_as_user_errors():
    for bad in ({"cache_mode": "sometimes"}, {"rpm": 0}, {"window_s": -1},
                {"prices": {"m": {"input_per_1m": 1}}}):
        with pytest.raises(UserError):
            GatewayConfig(**bad)
    assert "secret" not in repr(GatewayConfig(api_key="secret"))


def test_callers_that_wake_too_late_book_a_fresh_slot():
    import asyncio
    import time

    from rlm_ray.llm.limiter_client import LocalLimiter

    async def scenario() -> int:
        limiter = LocalLimiter(Limits(rpm=600, tpm=None, window_s=6))
        tasks = [asyncio.create_task(limiter.acquire(10, None)) for _ in range(30)]
        await asyncio.sleep(0)       # everyone books a slot...
        time.sleep(1.5)              # ...then the loop stalls past their slots and the slack
        await asyncio.gather(*tasks)
        return limiter.stats()["reservations"]

    assert asyncio.run(scenario()) > 30


def test_bench_gateway_rejects_bad_options_as_user_errors(capsys):
    from rlm_ray.cli import main

    assert main(["bench", "gateway", "--phases", "a,zz"]) == 2
    assert "unknown phase(s) zz" in capsys.readouterr().err
    assert main(["bench", "gateway", "--calls", "0"]) == 2


def test_limiter_key_never_carries_url_credentials():
    config = GatewayConfig(api_base="https://user:s3cret@llm.example.com:8443/v1?token=abc")
    assert config.limiter_key("openai/m") == "openai/m@https://llm.example.com:8443/v1"


def test_a_burst_with_a_bad_first_estimate_still_fills_the_token_limit():
    # 600 callers at once, no max_tokens: the first estimate (256 output tokens) is 6x
    # too high; refunds from the first completions must reach the callers still waiting.
    import heapq

    clock = FakeClock()
    tpm = 24_000
    limiter = RateLimiter(Limits(rpm=None, tpm=tpm, window_s=60), clock=clock)
    events = [(clock.now, 0, i, 0.0) for i in range(600)]   # (time, kind 0=ask 1=done, id, estimate)
    heapq.heapify(events)
    sent, charged = [], []
    while events:
        when, kind, i, estimate = heapq.heappop(events)
        clock.now = max(clock.now, when)
        if kind == 1:
            limiter.settle(estimate, 24 + 17, 17)
            continue
        booking = limiter.reserve(24)
        if not booking.booked:
            heapq.heappush(events, (booking.at, 0, i, 0.0))
            continue
        sent.append(booking.at)
        charged.append(41)
        heapq.heappush(events, (booking.at + 0.2, 1, i, booking.estimated_tokens))
    sent.sort()
    assert max_in_window(sent, charged, 60) <= tpm
    achieved = sum(charged) / (sent[-1] - sent[0]) * 60
    assert achieved / tpm >= 0.9


def test_long_texts_are_counted_once_and_exactly():
    from rlm_ray import tokens

    text = "def f(x):\n    return x * 2  # ünïcode\n" * 400
    exact = len(tokens.encoder().encode_ordinary(text))
    assert tokens.count_tokens(text) == exact
    assert tokens.count_tokens(str(text)) == exact       # an equal string: the memo's count
    copy = "".join(list(text))                           # another object, same text
    assert copy is not text and tokens.count_tokens(copy) == exact
    other = text[:-1] + "!"
    assert tokens.count_tokens(other) == len(tokens.encoder().encode_ordinary(other))


def test_a_huge_text_is_sized_from_a_sample_and_a_small_one_exactly(monkeypatch):
    from rlm_ray import tokens

    small = "x = [i ** 2 for i in range(10)]  # squares\n" * 100
    assert tokens.tokens_about(small) == (len(tokens.encoder().encode_ordinary(small)), True)

    lines = [f"record {i}: user_{i % 97} said 'ünïcode {i * 7919 % 1000}' at 12:{i % 60:02d}\n"
             for i in range(60_000)]
    huge = "".join(lines)
    assert len(huge) > tokens.EXACT_MAX_CHARS
    exact = len(tokens.encoder().encode_ordinary(huge))
    encoded: list[int] = []
    real = tokens._encode_len
    monkeypatch.setattr(tokens, "_encode_len", lambda text: encoded.append(len(text)) or real(text))
    estimate, is_exact = tokens.tokens_about(huge)
    assert not is_exact and abs(estimate - exact) / exact < 0.03
    # the point of it: a bounded sample is tokenised, never the whole text
    assert sum(encoded) <= tokens.SAMPLE_WINDOWS * tokens.SAMPLE_WINDOW_CHARS
    assert tokens.tokens_about(huge) == (estimate, False)   # the same sample every time


def test_the_limiters_estimate_of_a_long_text_leans_high_from_a_sample(monkeypatch):
    import inspect
    import json
    import random

    from rlm_ray import tokens

    rng = random.Random(7)
    texts = {
        "code": inspect.getsource(inspect)[:24_000],
        "records": "".join(f"record {i}: user_{i % 97} said 'ünïcode {rng.randrange(1000)}'\n"
                           for i in range(600)),
        "json": json.dumps([{"id": i, "v": rng.random(), "name": f"user{i}"} for i in range(300)]),
        "cjk": "这是一个用于测试分词器的中文句子，包含一些标点符号。" * 200,
    }
    encoded: list[int] = []
    real = tokens._encode_len
    monkeypatch.setattr(tokens, "_encode_len", lambda text: encoded.append(len(text)) or real(text))
    for name, text in texts.items():
        assert len(text) > tokens.ESTIMATE_EXACT_CHARS
        exact = len(tokens.encoder().encode_ordinary(text))
        encoded.clear()
        estimate = tokens.estimate_tokens(text)
        # Leans high (a limiter that books too little meets 429s), but not by much.
        assert exact <= estimate <= 1.3 * exact, name
        assert estimate <= len(text.encode()), name
        # The point of it: an eighth of the text or less is tokenised (from 4 KB on).
        assert 0 < sum(encoded) <= len(text) / 8, name

    short = "Count the records labelled 'x'.\n" * 20
    assert tokens.estimate_tokens(short) == len(tokens.encoder().encode_ordinary(short))
    counted = texts["code"]
    assert tokens.count_tokens(counted) == tokens.estimate_tokens(counted)   # counted before: exact
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": texts["json"]}]
    assert tokens.chat_prompt_tokens(messages) <= tokens.chat_prompt_estimate(messages) \
        <= 1.3 * tokens.chat_prompt_tokens(messages)


def test_a_huge_str_context_is_described_with_an_estimate():
    from rlm_ray.engine import prompts

    assert "tokens: 12\n" in prompts.str_metadata("a\nb", 12)
    text = prompts.str_metadata("a\nb", 1_234_567, exact=False)
    assert "tokens: about 1234567 (estimated from a sample)" in text and "lines: 2" in text


def test_litellms_request_setup_runs_inline_only_when_it_cannot_block():
    import contextvars
    import functools
    import socket

    from litellm import main as litellm_main

    from rlm_ray.llm._litellm import SetupExecutor, setup_inline, setup_is_cpu_only

    # Static-key providers build a request from CPU alone; cloud-IAM ones may fetch a token.
    assert setup_is_cpu_only("openai/gpt-4o-mini") and setup_is_cpu_only("anthropic/claude-3-haiku-20240307")
    assert not setup_is_cpu_only("vertex_ai/gemini-1.5-pro")
    assert not setup_is_cpu_only("bedrock/anthropic.claude-3-haiku-20240307-v1:0")
    assert not setup_is_cpu_only("no-such-provider-anywhere")

    def setup(ctx):   # the shape litellm's acompletion hands to the loop's executor
        return functools.partial(ctx.run, functools.partial(
            litellm_main.completion, model="openai/gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}], mock_response="mocked"))

    executor = SetupExecutor()
    try:
        token = setup_inline.set(True)
        try:
            done = executor.submit(setup(contextvars.copy_context()))
            assert done.done() and executor.inline_runs == 1   # finished before submit returned
            assert done.result().choices[0].message.content == "mocked"
            # Anything else (a DNS lookup, a file read) still gets a thread.
            lookup = executor.submit(functools.partial(contextvars.copy_context().run, socket.getaddrinfo),
                                     "127.0.0.1", 80)
            assert lookup.result(timeout=30) and executor.inline_runs == 1
            assert executor.submit(threading.get_ident).result(timeout=30) != threading.get_ident()
        finally:
            setup_inline.reset(token)
        # A call that did not ask for it (a provider that may block) keeps litellm's thread.
        threaded = executor.submit(setup(contextvars.copy_context()))
        assert threaded.result(timeout=30).choices[0].message.content == "mocked"
        assert executor.inline_runs == 1
    finally:
        executor.shutdown()


def test_a_full_collection_after_start_up_skips_the_start_up_heap():
    # In a fresh process (freezing is for processes rlm-ray owns, not pytest's):
    # a full collection walks litellm's ~400k start-up objects before the freeze,
    # and only what was made since after it.
    import subprocess
    import sys

    probe = """
import gc, json, time
from rlm_ray.llm._litellm import litellm
from rlm_ray.heap import freeze_startup_heap
litellm()
def full_pass():
    started = time.process_time()
    gc.collect()
    return time.process_time() - started
before = min(full_pass() for _ in range(3))
freeze_startup_heap()
after = min(full_pass() for _ in range(3))
print(json.dumps([before, after, gc.get_freeze_count(), len(gc.get_objects()), gc.get_threshold()[0]]))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    before, after, frozen, tracked, young = json.loads(out.stdout.splitlines()[-1])
    assert frozen > 10 * tracked
    assert after < 0.2 * before, (before, after)
    assert young >= 10_000
