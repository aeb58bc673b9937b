"""litellm, imported lazily (it costs ~2-3 s) and configured once per process:
offline price map, no telemetry, no callbacks, quiet logs, and none of the
per-call bookkeeping that only callbacks read (see _skip_callback_bookkeeping)."""
from __future__ import annotations

import logging
import os
import threading
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
