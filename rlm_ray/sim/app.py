"""The simulator's HTTP application: OpenAI's `/v1/chat/completions` and
`/v1/models`, plus `/stats` and `/admin/*` for tests.

Everything runs on one asyncio event loop: latency is `await asyncio.sleep`,
so hundreds of in-flight requests cost no threads. A request goes through the
checks a real provider makes, in its order: auth, model, body, context
length, rate limits (storm, RPM, TPM), then latency, then an injected fault or
the policy's answer.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web

from rlm_ray.sim import responses
from rlm_ray.sim.caching import PromptCache, billing_style
from rlm_ray.sim.config import SimConfig
from rlm_ray.sim.faults import FAULT_HANDLERS, ConnectionDropped, FaultPicker
from rlm_ray.sim.limits import SlidingWindow
from rlm_ray.sim.registry import POLICIES, Policy, PolicyRefusal, load_policies
from rlm_ray.sim.replay import REPLAY_MODEL, Replay
from rlm_ray.sim.stats import SimStats, prompt_key
from rlm_ray.sim.usage import boundary_tokens, truncate_to_tokens
from rlm_ray.tokens import REPLY_PRIMING_TOKENS

log = logging.getLogger(__name__)

BAD_API_KEY = "sim-bad-key"
DROPPED = 499  # internal marker (nginx's "client closed"): never reaches a client
DEFAULT_MAX_COMPLETION = 4096  # when the client sets no max_tokens


@dataclass
class Simulator:
    """State behind one server: config, limiter, fault draws, counters."""

    config: SimConfig
    stats: SimStats = field(init=False)
    limiter: SlidingWindow = field(init=False)
    faults: FaultPicker = field(init=False)
    prompt_cache: PromptCache = field(init=False)
    storm_until: float = 0.0
    storm_retry_after_s: float = 1.0
    replay: Replay | None = None     # serves the model `sim/replay` when set
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        load_policies()
        self.stats = SimStats(self.config.window_s)
        self.limiter = SlidingWindow(self.config.window_s)
        self.faults = FaultPicker(self.config)
        self.prompt_cache = PromptCache(self.config.cache_replicas, self.config.seed)
        self.latency_rng = random.Random(f"latency-{self.config.seed}")

    def policy(self, model) -> Policy | None:
        if model == REPLAY_MODEL and self.replay is not None:
            return self.replay.reply
        return POLICIES.get(model) if isinstance(model, str) else None

    def model_names(self) -> list[str]:
        return sorted([*POLICIES, *([REPLAY_MODEL] if self.replay is not None else [])])

    def storm(self, seconds: float, retry_after_s: float = 1.0) -> None:
        """Answer every request with 429 for the next `seconds`."""
        with self._lock:
            self.storm_until = time.monotonic() + seconds
            self.storm_retry_after_s = retry_after_s

    def latency_s(self, completion_tokens: int) -> float:
        cfg = self.config
        base = (cfg.latency_ms + cfg.per_token_ms * completion_tokens) / 1000.0
        if cfg.jitter:
            base *= 1.0 + cfg.jitter * self.latency_rng.uniform(-1.0, 1.0)
        return max(base, 0.0)

    def admit(self, tokens: int) -> tuple[web.Response | None, str | None]:
        """(the 429 to send or None, the fault to inject or None)."""
        now = time.monotonic()
        with self._lock:
            if now < self.storm_until:
                return responses.rate_limited(self.storm_retry_after_s,
                                              "Rate limit reached (simulated 429 storm)."), None
            wait = self.limiter.wait_for_room(now, tokens, self.config.rpm, self.config.tpm)
            if wait > 0:
                return responses.rate_limited(
                    wait, f"Rate limit reached for the simulator: limit {self.config.rpm} "
                          f"requests / {self.config.tpm} tokens per {self.config.window_s:g}s; "
                          f"requested {tokens} tokens. Please try again in {wait:.3f}s."), None
            self.limiter.record(now, tokens)
            fault = self.faults.pick()
        self.stats.admitted(now, tokens)
        return None, fault


async def chat_completions(request: web.Request) -> web.StreamResponse:
    sim: Simulator = request.app[SIM_KEY]
    sim.stats.request_started()
    try:
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return responses.error(400, "The request body is not a JSON object.",
                                   "invalid_request_error")
        model = body.get("model")
        sim.stats.model_requested(str(model))
        return await _complete(request, sim, body, model)
    finally:
        sim.stats.request_finished()


async def _complete(request: web.Request, sim: Simulator, body: dict, model) -> web.StreamResponse:
    if _api_key(request) == BAD_API_KEY:
        return responses.error(401, "Incorrect API key provided (simulator: sim-bad-key).",
                               "invalid_request_error", "invalid_api_key")
    policy = sim.policy(model)
    if policy is None:
        hint = (" (start the simulator with --replay FILE to serve it)"
                if model == REPLAY_MODEL else "")
        return responses.error(
            404, f"The model `{model}` does not exist on the rlm-ray simulator{hint} "
                 f"(known: {', '.join(sim.model_names())}).",
            "invalid_request_error", "model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return responses.error(400, "'messages' must be a non-empty list of objects.",
                               "invalid_request_error", "invalid_messages")
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        return responses.error(400, "'max_tokens' must be a positive integer.",
                               "invalid_request_error", "invalid_value")
    boundaries = boundary_tokens(messages)
    n_prompt = boundaries[-1] + REPLY_PRIMING_TOKENS
    window = sim.config.window_for(str(model))
    if n_prompt + (max_tokens or 0) > window:
        return responses.error(
            400, f"This model's maximum context length is {window} tokens. However, you "
                 f"requested {n_prompt + (max_tokens or 0)} tokens ({n_prompt} in the "
                 f"messages, {max_tokens or 0} in the completion). Please reduce the length "
                 f"of the messages or completion.",
            "invalid_request_error", "context_length_exceeded")

    # Policies are pure and cheap: answering first lets TPM charge a real figure.
    try:
        reply = policy(messages)
    except PolicyRefusal as exc:
        return responses.error(400, str(exc), "invalid_request_error", "replay_mismatch")
    except Exception as exc:  # a policy bug must reach the test as a clear 500, not a hang
        log.exception("simulator policy %s failed", model)
        return responses.error(500, f"simulator policy {model} failed: {exc!r}",
                               "server_error", "policy_error")
    text, n_completion, cut = truncate_to_tokens(
        reply, max_tokens or min(DEFAULT_MAX_COMPLETION, window - n_prompt))
    rejection, fault = sim.admit(n_prompt + (max_tokens or n_completion))
    if rejection is not None:
        return rejection
    await asyncio.sleep(sim.latency_s(n_completion))

    billing = _bill_cache(sim, model, body, messages, boundaries)
    tier = _served_tier(body)
    answer = responses.completion(model, text, n_prompt, n_completion, "length" if cut else "stop",
                                  usage_extra=billing.usage_fields(billing_style(
                                      sim.config.billed_like(model))), service_tier=tier)
    if fault is not None:
        sim.stats.fault(fault)
        try:
            return await FAULT_HANDLERS[fault](request, json.dumps(answer).encode(), sim.config)
        except ConnectionDropped:
            return _dropped_marker()
    sim.stats.completed(prompt_key(model, messages), n_prompt, n_completion,
                        billing.cached_tokens, billing.cache_write_tokens, tier)
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return await _stream(request, answer, include_usage)
    return web.json_response(answer)


def _bill_cache(sim: Simulator, model: str, body: dict, messages: list[dict],
                boundaries: list[int]):
    """Prompt caching as the served model's provider family bills it (sim/caching.py)."""
    key = body.get("prompt_cache_key")
    return sim.prompt_cache.bill(model, billing_style(sim.config.billed_like(model)), messages,
                                 boundaries, key if isinstance(key, str) and key else None)


def _served_tier(body: dict) -> str | None:
    """The tier a request asked for, as OpenAI reports it back ("auto" is served as "default")."""
    tier = body.get("service_tier")
    if not isinstance(tier, str) or not tier:
        return None
    return "default" if tier == "auto" else tier


async def _stream(request: web.Request, answer: dict, include_usage: bool) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={"cache-control": "no-cache"})
    response.content_type = "text/event-stream"
    await response.prepare(request)
    for event in responses.stream_events(answer, include_usage):
        await response.write(event)
    await response.write_eof()
    return response


def _dropped_marker() -> web.Response:
    # The socket is already closed; aiohttp discards what it cannot send.
    return web.Response(status=DROPPED)


def _api_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("api-key")


async def list_models(request: web.Request) -> web.Response:
    created = int(request.app[SIM_KEY].stats.started_at)
    data = [{"id": name, "object": "model", "created": created, "owned_by": "rlm-ray-simulator"}
            for name in request.app[SIM_KEY].model_names()]
    return web.json_response({"object": "list", "data": data})


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_KEY].stats.snapshot())


async def admin_reset(request: web.Request) -> web.Response:
    request.app[SIM_KEY].stats.reset()
    return web.json_response({"ok": True})


async def admin_storm(request: web.Request) -> web.Response:
    try:
        spec = await request.json()
        seconds, retry_after = float(spec["seconds"]), float(spec.get("retry_after_s", 1.0))
    except (ValueError, KeyError, TypeError):
        return responses.error(400, 'expected JSON {"seconds": S, "retry_after_s": R}',
                               "invalid_request_error")
    request.app[SIM_KEY].storm(seconds, retry_after)
    return web.json_response({"ok": True, "seconds": seconds, "retry_after_s": retry_after})


async def label(request: web.Request, response: web.StreamResponse) -> None:
    """Every response, streamed or not, says it comes from a simulator."""
    response.headers.update(responses.SIM_HEADERS)


@web.middleware
async def count_status(request: web.Request, handler) -> web.StreamResponse:
    response = await handler(request)
    if request.path.endswith("/chat/completions") and response.status != DROPPED:
        request.app[SIM_KEY].stats.status(response.status)
    return response


SIM_KEY = web.AppKey("simulator", Simulator)


def build_app(sim: Simulator) -> web.Application:
    # 64 MiB bodies: root prompts near a 128k-token window are a few MB.
    app = web.Application(middlewares=[count_status], client_max_size=64 * 2**20)
    app[SIM_KEY] = sim
    app.on_response_prepare.append(label)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/stats", get_stats)
    app.router.add_post("/admin/reset", admin_reset)
    app.router.add_post("/admin/storm", admin_storm)
    return app
