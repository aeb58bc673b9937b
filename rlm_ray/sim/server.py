"""`SimServer`: the SIMULATOR on a loopback port, served by its own asyncio
event loop in a daemon thread (so tests, demos and `--model sim` can run one
in-process), and `resolve_model` for the `--model sim` shortcut."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import urllib.request
from dataclasses import fields

from aiohttp import web

from rlm_ray.errors import UserError
from rlm_ray.sim.app import Simulator, build_app
from rlm_ray.sim.config import SimConfig
from rlm_ray.sim.registry import POLICIES, load_policies
from rlm_ray.sim.replay import REPLAY_MODEL, Replay, load_replay
from rlm_ray.sim.stats import LABEL, normalize

DEFAULT_POLICY = "sim/rlm-policy"
_SHUTDOWN_GRACE_S = 0.2  # hung-connection faults must not hold up stop()


class SimServer:
    """An OpenAI-compatible provider SIMULATOR. Knobs: see `SimConfig`.
    `replay`: a replay file (path, parsed dict or `Replay`) served as `sim/replay`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 replay: str | dict | Replay | None = None, **knobs) -> None:
        known = {f.name for f in fields(SimConfig)}
        unknown = sorted(set(knobs) - known)
        if unknown:
            raise TypeError(f"unknown SimServer knob(s): {', '.join(unknown)}")
        self.host, self.port = host, port
        self.config = SimConfig(**knobs)
        self.simulator = Simulator(self.config, replay=load_replay(replay))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> SimServer:
        if self._thread is not None:
            return self
        sock = self._bind()
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        failure: list[BaseException] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, args=(sock, ready, failure),
                                        name=f"rlm-ray-sim:{self.port}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise UserError(f"simulator cannot listen on {self.host}:{self.port}: "
                            f"{exc.strerror or exc}") from None
        return sock

    def _serve(self, sock: socket.socket, ready: threading.Event,
               failure: list[BaseException]) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            # handler_cancellation: a client that gives up cancels its sleeping handler.
            self._runner = web.AppRunner(build_app(self.simulator), handler_cancellation=True,
                                         access_log=None, shutdown_timeout=_SHUTDOWN_GRACE_S)
            loop.run_until_complete(self._runner.setup())
            site = web.SockSite(self._runner, sock, backlog=1024)
            loop.run_until_complete(site.start())
        except BaseException as exc:  # surfaced by start() in the caller's thread
            failure.append(exc)
            sock.close()
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._thread = None

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- addresses and observability ----------------------------------------
    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def thread_id(self) -> int | None:
        """The serving thread's native id: benches take its CPU out of their own."""
        return self._thread.native_id if self._thread is not None else None

    def stats(self) -> dict:
        return self.simulator.stats.snapshot()

    def reset_stats(self) -> None:
        self.simulator.stats.reset()

    def storm(self, seconds: float, retry_after_s: float = 1.0) -> None:
        """Answer every chat request with 429 (`Retry-After: retry_after_s`) for `seconds`."""
        self.simulator.storm(seconds, retry_after_s)

    def __repr__(self) -> str:
        return f"SimServer({self.base_url}, {LABEL})"


def fetch_stats(url: str, timeout: float = 10.0) -> dict:
    """`GET /stats` of a simulator at `url` (with or without the /v1 suffix);
    the same dict `SimServer.stats()` returns in-process."""
    root = url.rstrip("/").removesuffix("/v1")
    with urllib.request.urlopen(root + "/stats", timeout=timeout) as response:
        return normalize(json.load(response))


def resolve_model(model: str, api_base: str | None, bill_like: str | None = None
                  ) -> tuple[str, str | None, SimServer | None]:
    """Turn the CLI's `--model` into (litellm model, api_base, server to stop or None).

    `sim` / `sim/<policy>` start an in-process simulator unless `api_base`
    already points at one; `sim/replay:FILE` starts one serving that replay file
    (with `api_base`, the server there must have been started with `--replay`);
    any other model string passes through unchanged. `sim/<policy>@TOKENS` (or
    `sim@TOKENS`): the in-process server enforces that input window for the policy.
    `bill_like`: the litellm
    price entry an in-process simulator reports prompt caching like (the one
    `--price-like` names for this model), so its usage matches the prices.
    """
    if model != "sim" and not model.startswith("sim/") and not model.startswith("sim@"):
        return model, api_base, None
    if model == REPLAY_MODEL or model.startswith(REPLAY_MODEL + ":"):
        return _resolve_replay(model, api_base)
    name, window = _split_window(model)
    policy = DEFAULT_POLICY if name == "sim" else name
    if policy not in load_policies():
        raise UserError(f"unknown simulator policy {policy!r} (known: {', '.join(sorted(POLICIES))})")
    if api_base:
        if window is not None:
            raise UserError(f"{model}: @TOKENS sets the window of an in-process simulator; for "
                            f"the one at {api_base} start it with --model-window {policy}=TOKENS")
        return f"openai/{policy}", api_base, None
    server = SimServer(bill_like={policy: bill_like} if bill_like else (),
                       model_windows={policy: window} if window else ()).start()
    return f"openai/{policy}", server.base_url, server


def _split_window(model: str) -> tuple[str, int | None]:
    """`sim/<policy>@TOKENS` -> (policy, TOKENS): the window the server enforces for it."""
    name, sep, tokens = model.partition("@")
    if not sep:
        return model, None
    if not tokens.isdigit() or int(tokens) < 1:
        raise UserError(f"{model}: the window after @ must be a token count, e.g. "
                        f"{name}@32000")
    return name, int(tokens)


def served_windows(server: SimServer | None, model: str) -> dict[str, int] | None:
    """{litellm model: window} that an in-process simulator enforces for `model`: the
    fact litellm's table gives for a real model, so compaction can work from it."""
    if server is None or not model.startswith("openai/"):
        return None
    return {model: server.config.window_for(model[len("openai/"):])}


def _resolve_replay(model: str, api_base: str | None) -> tuple[str, str | None, SimServer | None]:
    path = model[len(REPLAY_MODEL) + 1:] if ":" in model else ""
    if api_base:
        return f"openai/{REPLAY_MODEL}", api_base, None
    if not path:
        raise UserError(f"give the replay file: --model {REPLAY_MODEL}:FILE "
                        f"(or start `rlm-ray sim --replay FILE` and pass --api-base)")
    server = SimServer(replay=Replay.load(path)).start()
    return f"openai/{REPLAY_MODEL}", server.base_url, server
