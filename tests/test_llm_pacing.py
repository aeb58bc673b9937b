"""Pacing modes of the rate limiter. Even pacing spreads rpm over the window;
burst pacing spends a sliding window's whole allowance, then one request per
request leaving the window. Both against the provider SIMULATOR enforcing
exactly N requests in any sliding window (429 + Retry-After past it), over
real loopback HTTP through litellm; and the schedules themselves on a fake clock."""
from __future__ import annotations

import time

import pytest

from rlm_ray.errors import UserError
from rlm_ray.llm import Completion, GatewayConfig, complete, complete_many
from rlm_ray.llm.limiter import Limits, RateLimiter

ECHO = "openai/sim/echo"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


LATENCY_S = 0.5


def booked_times(limiter: RateLimiter, clock: FakeClock, count: int, tokens: int = 0) -> list[float]:
    """Callers one after another, each call answering LATENCY_S after its slot;
    a quoted caller comes back when told to."""
    times = []
    for _ in range(count):
        while True:
            booking = limiter.reserve(tokens, 10)
            if booking.booked:
                times.append(booking.at)
                limiter.settle(booking.estimated_tokens, booking.estimated_tokens, 10,
                               booking.ref, booking.at + LATENCY_S)
                break
            clock.now = max(clock.now, booking.at)
    return times


def busiest_window(times: list[float], window_s: float) -> int:
    """Most bookings in any half-open window (t - window_s, t]: what a sliding
    window provider counts when each request arrives at its booked time."""
    return max(sum(1 for u in times if t - window_s < u <= t) for t in times)


@pytest.mark.parametrize("pacing", ["even", "burst"])
def test_no_sliding_window_ever_holds_more_than_the_limit(pacing):
    clock = FakeClock()
    limiter = RateLimiter(Limits(rpm=20, tpm=None, window_s=4.0, pacing=pacing), clock=clock)
    times = booked_times(limiter, clock, 100)
    assert busiest_window(times, 4.0) <= 20
    assert times == sorted(times)


def test_even_pacing_keeps_requests_bigger_than_its_bucket_within_the_window():
    # The even pacer's bucket holds 3% of the limit. A request bigger than that used
    # to go as soon as the bucket was full, on top of a window's worth of paid
    # traffic: 1,200 tokens in a window of a 1,000-token limit. It now also waits
    # for the last window's sends to leave it room.
    clock = FakeClock()
    limiter = RateLimiter(Limits(rpm=None, tpm=1000, window_s=10.0), clock=clock)
    sent: list[tuple[float, int]] = []
    for tokens in [150, 450] * 10:
        while True:
            booking = limiter.reserve(tokens - 10, 10)
            if booking.booked:
                sent.append((booking.at, tokens))
                limiter.settle(booking.estimated_tokens, tokens, 10, booking.ref, booking.at + LATENCY_S)
                break
            clock.now = max(clock.now, booking.at)
    times = [t for t, _ in sent]
    assert times == sorted(times)
    # Every window, even one starting a hair after a send (the provider's clock is not ours).
    busiest = max(sum(n for u, n in sent if t - 10.0 + 1e-6 < u <= t) for t in times)
    assert busiest <= 1000, busiest
    # ...and not much slower than that allows: 6,000 tokens at 900 a window (the
    # schedule keeps a tenth for jitter) need 6.7 windows; with requests this big
    # against the limit (15-45% of it), the schedule takes about 9.5.
    assert times[-1] - times[0] < 11 * 10.0


def test_burst_spends_the_whole_window_then_one_per_expiry():
    clock = FakeClock()
    limiter = RateLimiter(Limits(rpm=20, tpm=None, window_s=4.0, pacing="burst"), clock=clock)
    start = clock.now
    times = booked_times(limiter, clock, 61)
    slack = limiter.buckets["requests"].slack_s
    assert all(t == start for t in times[:20])            # the whole allowance at once
    # Then each later window opens when the call it replaces has answered and left
    # the window (plus the slack).
    assert times[20] == pytest.approx(start + LATENCY_S + 4.0 + slack)
    assert times[60] == pytest.approx(start + 3 * (LATENCY_S + 4.0 + slack))
    even = RateLimiter(Limits(rpm=20, tpm=None, window_s=4.0), clock=FakeClock())
    assert booked_times(even, even._clock, 61)[-1] - 1000.0 > 1.2 * (times[-1] - start)


def test_burst_tokens_fit_the_window_and_a_429_empties_it():
    clock = FakeClock()
    limiter = RateLimiter(Limits(rpm=None, tpm=1000, window_s=10.0, pacing="burst"), clock=clock)
    times = booked_times(limiter, clock, 12, tokens=190)   # 200 tokens each: 5 per window
    assert times[:5] == [times[0]] * 5 and times[5] > times[0]
    assert busiest_window(times, 10.0) <= 5
    clock.now = paused_at = times[-1]
    limiter.penalize(3.0)           # the provider says: full for 3 more seconds
    assert booked_times(limiter, clock, 1, tokens=190)[0] >= paused_at + 3.0


def test_pacing_is_chosen_per_model_and_checked():
    config = GatewayConfig(rpm=10, pacing="even", model_pacing={"claude-x": "burst"})
    assert config.pacing_for("anthropic/claude-x") == "burst"
    assert config.pacing_for("openai/gpt-x") == "even"
    with pytest.raises(UserError, match="pacing must be one of even, burst"):
        GatewayConfig(pacing="bursty")
    with pytest.raises(UserError, match="pacing for 'm'"):
        GatewayConfig(model_pacing={"m": "fast"})


def _run_batch(sim, pacing: str, n_limit: int, window_s: float, calls: int):
    # litellm's import and first client cost seconds: pay them on an unlimited
    # server, so the limited one sees only the batch.
    warm = sim()
    complete([{"role": "user", "content": "warm"}], ECHO,
             config=GatewayConfig(api_base=warm.base_url, shared_limiter=False))
    server = sim(latency_ms=20, rpm=n_limit, window_s=window_s)
    config = GatewayConfig(api_base=server.base_url, rpm=n_limit, window_s=window_s,
                           pacing=pacing, shared_limiter=False, backoff_s=0.01)
    requests = [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(calls)]
    started = time.monotonic()
    results = complete_many(requests, model=ECHO, config=config, use_ray=False)
    return results, time.monotonic() - started, server.stats()


@pytest.mark.timeout(180)
def test_burst_pacing_finishes_at_the_sliding_window_floor_without_a_429(sim):
    n, window_s, calls = 20, 6.0, 41      # 2N+1: the last call cannot start before 2 windows
    results, wall, stats = _run_batch(sim, "burst", n, window_s, calls)
    assert all(isinstance(r, Completion) for r in results), results
    assert stats["by_status"].get("429", stats["by_status"].get(429, 0)) == 0
    assert stats["windows"]["max_requests"] <= n
    floor = (calls - 1) // n * window_s + 0.020     # whole windows, then one latency
    assert wall <= 1.1 * floor, f"burst pacing took {wall:.2f}s; the limit allows {floor:.2f}s"


@pytest.mark.timeout(180)
def test_even_pacing_also_never_meets_a_429(sim):
    n, window_s, calls = 20, 6.0, 41
    results, wall, stats = _run_batch(sim, "even", n, window_s, calls)
    assert all(isinstance(r, Completion) for r in results), results
    assert stats["by_status"].get("429", stats["by_status"].get(429, 0)) == 0
    assert stats["windows"]["max_requests"] <= n


def test_pacing_flags_and_spec_keys_become_config_fields():
    from rlm_ray.llm.options import cost_fields

    fields = cost_fields({"pacing": ["even", "claude-x=burst"]}, "openai/gpt-x")
    config = GatewayConfig(rpm=10, **fields)
    assert (config.pacing_for("anthropic/claude-x"), config.pacing_for("openai/gpt-x")) == ("burst", "even")
    assert GatewayConfig(**cost_fields({"pacing": "burst"}, "m")).pacing == "burst"
    assert GatewayConfig(**cost_fields({}, "m")).pacing == "even"
    with pytest.raises(UserError, match="pacing must be one of"):
        cost_fields({"pacing": ["fast"]}, "m")
