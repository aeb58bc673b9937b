"""complete / acomplete: one model call through cache, budget, limiter, retries.

Order of operations for a call:
  cache lookup (deterministic calls) -> budget reserve (estimate) ->
  [limiter reserve -> litellm (its own retries off) -> limiter settle]
  repeated by tenacity for retryable failures -> budget settle -> cache write.
A 429 penalises the shared limiter, so everyone (not just this caller) backs
off for Retry-After and the rate adapts down."""
from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import replace
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from rlm_ray.errors import UserError
from rlm_ray.llm import cache as response_cache
from rlm_ray.llm import prompt_cache as prompt_caching
from rlm_ray.llm._litellm import SetupExecutor, litellm, setup_inline, setup_is_cpu_only
from rlm_ray.llm.budget import Budget
from rlm_ray.llm.config import DEFAULT_CONFIG, GatewayConfig
from rlm_ray.llm.cost import billed_cost, price_for
from rlm_ray.llm.limiter import DEFAULT_OUTPUT_TOKENS
from rlm_ray.llm.limiter_client import limiter_for
from rlm_ray.llm.retry import BACKOFF_MAX_S, Failure, MalformedResponse, classify, redact
from rlm_ray.llm.turns import turn_gate
from rlm_ray.llm.types import Completion, LLMError
from rlm_ray.llm.usage import CallUsage
from rlm_ray.tokens import chat_prompt_estimate, chat_prompt_tokens, count_tokens

# Providers that talk OpenAI's wire format and often need no key (self-hosted, simulators).
_KEYLESS_OK = ("openai/", "hosted_vllm/", "custom_openai/", "text-completion-openai/")


class _Attempt(Exception):
    """One failed attempt, classified; tenacity retries it or gives up."""

    def __init__(self, failure: Failure, cause: BaseException) -> None:
        super().__init__(failure.reason)
        self.failure = failure
        self.cause = cause


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and "role" in m for m in messages):
        raise UserError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")


def _api_key(model: str, config: GatewayConfig) -> str | None:
    if config.api_key:
        return config.api_key
    # An OpenAI-compatible endpoint of our own (vLLM, the simulator) needs no key, but
    # the OpenAI SDK refuses to send a request without one.
    if config.api_base and model.startswith(_KEYLESS_OK) and not os.environ.get("OPENAI_API_KEY"):
        return "no-key"
    return None


# Per-call transport settings belong in the config (and never in the cache key);
# litellm retry knobs are ours to set.
_TRANSPORT_TO_CONFIG = {"api_base": "api_base", "base_url": "api_base", "api_key": "api_key",
                        "timeout": "timeout_s"}
_IGNORED_PARAMS = ("num_retries", "max_retries")


def _split_transport(config: GatewayConfig, params: dict) -> tuple[GatewayConfig, dict]:
    if not any(k in params for k in (*_TRANSPORT_TO_CONFIG, *_IGNORED_PARAMS)):
        return config, params
    params = dict(params)
    changes = {field: params.pop(key) for key, field in _TRANSPORT_TO_CONFIG.items() if key in params}
    for key in _IGNORED_PARAMS:
        params.pop(key, None)
    return config.with_(**changes), params


def _max_output(params: dict) -> int | None:
    return params.get("max_tokens") or params.get("max_completion_tokens")


class PromptSize:
    """The prompt's size in tokens, worked out on first use: a call with no limiter,
    no budget and a provider that reports usage never tokenises its prompt.
    `tokens` is the count (a budget's worst case needs it); `estimate` is what the
    rate limiter books, sampled for long texts (tokens.estimate_tokens)."""

    def __init__(self, messages: list[dict]) -> None:
        self._messages, self._tokens, self._estimate = messages, None, None

    @property
    def tokens(self) -> int:
        if self._tokens is None:
            self._tokens = chat_prompt_tokens(self._messages)
        return self._tokens

    @property
    def estimate(self) -> int:
        if self._tokens is not None:
            return self._tokens
        if self._estimate is None:
            self._estimate = chat_prompt_estimate(self._messages)
        return self._estimate


def _parse(response: Any, prompt: PromptSize, requested_tier: str | None) -> tuple[str, CallUsage]:
    try:
        choice = response.choices[0]
        text = choice.message.content
    except (AttributeError, IndexError, TypeError):
        raise MalformedResponse("the provider returned no choices") from None
    if text is None and not getattr(choice.message, "tool_calls", None):
        raise MalformedResponse("the provider returned a choice without content")
    text = text or ""
    served_tier = getattr(response, "service_tier", None)
    usage = CallUsage.from_response(
        getattr(response, "usage", None), prompt_fallback=lambda: prompt.tokens,
        completion_fallback=lambda: count_tokens(text),
        service_tier=served_tier if isinstance(served_tier, str) else requested_tier)
    return text, usage


async def _call_provider(model: str, messages: list[dict], params: dict,
                         config: GatewayConfig, prompt: PromptSize) -> tuple[str, CallUsage]:
    """One attempt: limiter slot, the HTTP call, usage fed back to the limiter."""
    lib = litellm()   # the first import blocks for seconds: never while holding a slot
    limiter = limiter_for(model, config)
    max_out = _max_output(params)
    ticket = await limiter.acquire(prompt.estimate, max_out) if limiter else None
    await turn_gate("send").pass_turn()   # a wave's tickets all arrive in one loop turn
    inline = setup_inline.set(setup_is_cpu_only(model))
    try:
        response = await lib.acompletion(
            model=model, messages=messages, api_base=config.api_base,
            api_key=_api_key(model, config), timeout=config.timeout_s,
            num_retries=0, max_retries=0, **params)
        text, usage = _parse(response, prompt, params.get("service_tier"))
    except Exception as exc:   # (cancellation is a BaseException and passes through)
        failure = classify(exc)
        if limiter and failure.kind == "rate_limit":
            limiter.penalize(failure.retry_after_s)
        if limiter and ticket:
            # A refused request costs no quota at the provider; anything else may have.
            limiter.settle(ticket, 0 if failure.kind == "rate_limit" else ticket.estimated_tokens, None)
        raise _Attempt(failure, exc) from None
    except BaseException:
        if limiter and ticket:   # cancelled mid-call: it may have reached the provider
            limiter.settle(ticket, ticket.estimated_tokens, None)
        raise
    finally:
        setup_inline.reset(inline)
    if limiter and ticket:
        # Providers charge max_tokens against TPM when it is given, the output otherwise.
        limiter.settle(ticket, usage.prompt_tokens + (max_out or usage.completion_tokens),
                       usage.completion_tokens)
    return text, usage


def _wait_strategy(has_limiter: bool, backoff_s: float):
    backoff = wait_random_exponential(multiplier=backoff_s, max=BACKOFF_MAX_S)

    def wait(state) -> float:
        exc = state.outcome.exception()
        failure = exc.failure if isinstance(exc, _Attempt) else None
        if failure and failure.kind == "rate_limit" and failure.retry_after_s is not None:
            # With a limiter the pause is already shared and scheduled there.
            return 0.0 if has_limiter else failure.retry_after_s
        return backoff(state)
    return wait


def _final_error(model: str, attempt: _Attempt, retries: int, config: GatewayConfig) -> LLMError:
    failure = attempt.failure
    reason = redact(failure.reason, (config.api_key,))
    if failure.retryable:
        message = f"{model}: gave up after {retries} retries ({failure.kind}): {reason}"
    else:
        message = f"{model}: {failure.kind.replace('_', ' ')} error (not retried): {reason}"
    return LLMError(message, model=model, kind=failure.kind, retries=retries,
                    retryable=failure.retryable)


async def _call_with_retries(model: str, messages: list[dict], params: dict, config: GatewayConfig,
                             prompt: PromptSize) -> tuple[str, CallUsage, int]:
    """(text, usage, retries), or LLMError once retrying is over."""
    has_limiter = bool(config.rpm or config.tpm)
    retrying = AsyncRetrying(
        stop=stop_after_attempt(config.max_retries + 1),
        wait=_wait_strategy(has_limiter, config.backoff_s),
        retry=retry_if_exception(lambda e: isinstance(e, _Attempt) and e.failure.retryable),
        reraise=True)
    attempts = 0
    try:
        async for attempt in retrying:
            with attempt:
                attempts += 1
                text, usage = await _call_provider(model, messages, params, config, prompt)
    except _Attempt as failed:
        raise _final_error(model, failed, attempts - 1, config) from None
    return text, usage, attempts - 1


def _bill(model: str, usage: CallUsage, config: GatewayConfig) -> tuple[float | None, float | None]:
    """(what the provider bills, what caching saved against the same call uncached)."""
    cost = billed_cost(model, usage, config)
    if cost is None or not (usage.cached_tokens or usage.cache_write_tokens):
        return cost, None if cost is None else 0.0
    uncached = billed_cost(model, replace(usage, cached_tokens=0, cache_write_tokens=0), config)
    return cost, None if uncached is None else uncached - cost


async def _paid_call(messages: list[dict], model: str, config: GatewayConfig,
                     budget: Budget | None, params: dict, started: float,
                     prompt_cache: str | None = None) -> Completion:
    """Budget reserve -> retried provider call -> budget settle (on the billed figure)."""
    await turn_gate("start").pass_turn()   # a wave's calls all start in one loop turn
    prompt = PromptSize(messages)
    if config.service_tier and "service_tier" not in params:
        params = {**params, "service_tier": config.service_tier}
    messages, params = prompt_caching.apply(messages, params, model, config, prompt_cache)
    budgets = [b for b in (budget, config.spend_cap) if b is not None]
    reservations = []
    if budgets:
        output_estimate = _max_output(params) or DEFAULT_OUTPUT_TOKENS
        price = price_for(model, config, params.get("service_tier"))
        # The most this call can cost (cache writes included): concurrent callers never overshoot.
        est_usd = price.worst_case(prompt.tokens, output_estimate) if price else None
        try:
            for held in budgets:
                reservations.append(await held.areserve(est_usd, prompt.tokens + output_estimate, 1))
        except BaseException:
            for held, reservation in zip(budgets, reservations):
                await held.asettle(reservation, 0.0, 0, 0)   # never sent: release, charge nothing
            raise
    try:
        text, usage, retries = await _call_with_retries(
            model, messages, params, config, prompt)
    except BaseException:
        for held, reservation in zip(budgets, reservations):
            # The call failed for good: it used a call slot, but no billed tokens.
            await held.asettle(reservation, 0.0, 0, 1)
        raise
    cost, saved = _bill(model, usage, config)
    for held, reservation in zip(budgets, reservations):
        await held.asettle(reservation, cost, usage.prompt_tokens + usage.completion_tokens, 1)
    return Completion(text, usage.prompt_tokens, usage.completion_tokens, cost,
                      time.perf_counter() - started, retries, False, model,
                      usage.cached_tokens, usage.cache_write_tokens, usage.reasoning_tokens,
                      usage.service_tier, saved)


def _free(done: Completion, started: float) -> Completion:
    """The same answer, obtained without paying: from the cache or a twin call."""
    return replace(done, cost_usd=0.0, retries=0, cache_hit=True, cached_tokens=0,
                   cache_write_tokens=0, cache_saved_usd=0.0,
                   latency_s=time.perf_counter() - started)


# Identical cacheable calls in flight in this process share one provider request.
_in_flight: dict[str, asyncio.Future] = {}


async def acomplete_here(messages: list[dict], model: str, *, config: GatewayConfig | None = None,
                         budget: Budget | None = None, prompt_cache: str | None = None,
                         **params) -> Completion:
    """acomplete, on the current loop: only for code already on the gateway loop.
    `prompt_cache="auto"` asks the provider to cache the prompt's prefix (see
    llm/prompt_cache.py); None or "off" sends the messages as they are."""
    config, params = _split_transport(config or DEFAULT_CONFIG, params)
    _check_messages(messages)
    started = time.perf_counter()
    if not (config.cache_uri and response_cache.should_cache(config.cache_mode, params)):
        return await _paid_call(messages, model, config, budget, params, started, prompt_cache)

    cache = response_cache.cache_for(config.cache_uri)
    key = response_cache.cache_key(model, messages, params)
    hit = await asyncio.to_thread(cache.get, key)
    if hit is not None:
        return Completion(hit["text"], hit["prompt_tokens"], hit["completion_tokens"], 0.0,
                          time.perf_counter() - started, 0, True, model)
    twin = _in_flight.get(key)
    if twin is not None:
        return _free(await asyncio.shield(twin), started)
    future = asyncio.get_running_loop().create_future()
    future.add_done_callback(lambda f: f.cancelled() or f.exception())  # no "never retrieved" noise
    _in_flight[key] = future
    try:
        done = await _paid_call(messages, model, config, budget, params, started, prompt_cache)
        await asyncio.to_thread(cache.put, key, {
            "model": model, "text": done.text, "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens, "cost_usd": done.cost_usd,
            "created_at": time.time()})
        future.set_result(done)
        return done
    except BaseException as exc:
        future.set_exception(exc)
        raise
    finally:
        _in_flight.pop(key, None)


# ---- one event loop per process for all model traffic ------------------------
# litellm keeps process-global async state (its logging worker, HTTP clients) bound
# to the loop that first used it, and breaks when calls arrive from several loops
# (asyncio.run, a Ray actor's loop, a sync caller). So every call runs on one
# private loop thread: sync callers block on it, async callers hop onto it once.
_LOOP_THREAD = "rlm-ray-llm"
_loop_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def gateway_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            _loop.set_default_executor(SetupExecutor())   # litellm's setup: see _litellm.py
            threading.Thread(target=_loop.run_forever, name=_LOOP_THREAD, daemon=True).start()
        return _loop


def setup_executor() -> SetupExecutor:
    """The gateway loop's default executor (it counts the setups it ran inline)."""
    return gateway_loop()._default_executor   # set by gateway_loop(), never replaced


def run_sync(coro):
    """Run `coro` on the gateway loop from synchronous code (any other thread)."""
    loop = gateway_loop()
    if threading.current_thread().name == _LOOP_THREAD:
        coro.close()
        raise RuntimeError("sync gateway call from the gateway loop itself: use acomplete")
    return asyncio.run_coroutine_threadsafe(coro, loop).result()


async def on_gateway_loop(coro):
    """Await `coro` on the gateway loop from any event loop (cancellation propagates)."""
    loop = gateway_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))


async def acomplete(messages: list[dict], model: str, *, config: GatewayConfig | None = None,
                    budget: Budget | None = None, prompt_cache: str | None = None,
                    **params) -> Completion:
    return await on_gateway_loop(acomplete_here(messages, model, config=config, budget=budget,
                                                prompt_cache=prompt_cache, **params))


def warm_up() -> None:
    """Pay litellm's first-call cost now: its request path imports modules on
    first use (0.3-0.7 s of CPU per process), which would otherwise land on a
    batch's first model calls. One mock call does it; litellm answers it itself
    and nothing is sent. A warm-up that fails only leaves that cost where it was."""
    lib = litellm()

    async def mock_call() -> None:
        await lib.acompletion(model="openai/rlm-ray-warm-up", api_key="none", mock_response="ok",
                              messages=[{"role": "user", "content": "warm up"}])
    try:
        run_sync(mock_call())
    except Exception:  # noqa: BLE001 - see the docstring
        pass


def complete(messages: list[dict], model: str, *, config: GatewayConfig | None = None,
             budget: Budget | None = None, prompt_cache: str | None = None,
             **params) -> Completion:
    return run_sync(acomplete_here(messages, model, config=config, budget=budget,
                                   prompt_cache=prompt_cache, **params))
