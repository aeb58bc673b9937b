"""litellm, imported lazily (it costs ~2-3 s) and configured once per process:
offline price map, no telemetry, no callbacks, quiet logs, and none of the
per-call bookkeeping that only callbacks read (see _skip_callback_bookkeeping).
SetupExecutor lets the gateway loop run litellm's request setup without a
thread hop, for providers whose setup never waits on I/O."""
from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from types import ModuleType

_lock = threading.Lock()
_module: ModuleType | None = None


def litellm() -> ModuleType:
    global _module
    if _module is not None:
        return _module
    with _lock:
        if _module is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            os.environ.setdefault("LITELLM_TELEMETRY", "False")
            import litellm as lib

            lib.suppress_debug_info = True
            lib.telemetry = False
            lib.drop_params = True           # a param one provider lacks must not fail the call
            lib.turn_off_message_logging = True   # prompts never go to litellm's loggers
            lib.callbacks = []
            lib.success_callback = []
            lib.failure_callback = []
            # litellm logs its own background-logging hiccups (e.g. an atexit flush on a
            # fresh loop) at ERROR; real call failures reach us as exceptions instead.
            for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
            logging.getLogger("httpx").setLevel(logging.WARNING)
            _skip_callback_bookkeeping(lib)
            _module = lib
    return _module


_CALLBACK_LISTS = ("callbacks", "success_callback", "failure_callback", "input_callback",
                   "_async_success_callback", "_async_failure_callback", "service_callback")


def _no_callbacks(lib: ModuleType) -> bool:
    return not any(getattr(lib, name, None) for name in _CALLBACK_LISTS)


def _skip_callback_bookkeeping(lib: ModuleType) -> None:
    """After every answered call litellm prices the response for its hidden params
    and queues a success-logging task that builds (and redacts, deep-copying the
    prompt) a logging payload: about half of a call's CPU in litellm, for loggers
    we never register (we price calls ourselves, llm/cost.py). While no callback
    is registered, both are skipped; the request, the response object and the
    errors are litellm's as ever. A litellm whose internals moved keeps its full
    bookkeeping: slower, never different."""
    try:
        from litellm import utils as lib_utils
        from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER as worker
        enqueue, update_metadata = worker.ensure_initialized_and_enqueue, lib_utils.update_response_metadata
    except (ImportError, AttributeError):
        return

    def lean_enqueue(async_coroutine):
        if _no_callbacks(lib):
            async_coroutine.close()   # a logging coroutine with no logger to reach
            return None
        return enqueue(async_coroutine)

    def lean_update_metadata(*args, **kwargs):
        if _no_callbacks(lib):
            return None
        return update_metadata(*args, **kwargs)

    worker.ensure_initialized_and_enqueue = lean_enqueue
    lib_utils.update_response_metadata = lean_update_metadata


# ---- litellm's request setup, inline on the gateway loop ----------------------------
# Providers whose setup (the synchronous half of an async litellm call: params,
# headers, the request body) is pure CPU: a static key, no credential refresh,
# no metadata fetch. Cloud-IAM providers (Vertex, Bedrock, Azure AD, ...) may
# block on a token endpoint there, so they keep litellm's thread.
CPU_ONLY_SETUP = frozenset({
    "openai", "anthropic", "gemini", "hosted_vllm", "custom_openai", "openai_like",
    "groq", "together_ai", "deepseek", "mistral", "fireworks_ai", "xai", "openrouter",
    "deepinfra", "cerebras", "perplexity"})

# Set by the gateway around one call: "this call's setup may run inline".
setup_inline: ContextVar[bool] = ContextVar("rlm_ray_setup_inline", default=False)


@functools.lru_cache(maxsize=256)
def setup_is_cpu_only(model: str) -> bool:
    try:
        provider = litellm().get_llm_provider(model)[1]
    except Exception:  # noqa: BLE001 - unknown to litellm: let litellm say so, on its thread
        return False
    return provider in CPU_ONLY_SETUP


def _is_request_setup(fn) -> bool:
    """litellm's acompletion hands `partial(context.run, partial(completion, ...))`
    to the loop's default executor; anything else (DNS lookups, file reads) is not it."""
    inner = fn.args[0] if isinstance(fn, functools.partial) and fn.args else None
    main = sys.modules.get("litellm.main")   # its `completion`, not the package's wrapper
    return (main is not None and isinstance(inner, functools.partial)
            and inner.func is getattr(main, "completion", None))


class SetupExecutor(ThreadPoolExecutor):
    """The gateway loop's default executor. litellm runs every async call's setup
    (1-2 ms of CPU) on it; handing that to a thread and back, with the loop and
    the pool's threads taking turns on the GIL, cost ~15-20% of a call's CPU.
    A setup that cannot block runs inline instead (the loop would have waited
    for it anyway); everything else still gets a thread."""

    def __init__(self) -> None:
        super().__init__(thread_name_prefix="rlm-ray-llm-io")
        self.inline = True      # False: every setup on a thread, as litellm does it
        self.inline_runs = 0

    def submit(self, fn, /, *args, **kwargs) -> Future:
        if not (self.inline and setup_inline.get() and _is_request_setup(fn)):
            return super().submit(fn, *args, **kwargs)
        self.inline_runs += 1
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - litellm's own error, raised in the awaiting call
            future.set_exception(exc)
        return future
