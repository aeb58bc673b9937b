"""litellm, imported lazily (it costs ~2-3 s) and configured once per process:
offline price map, no telemetry, no callbacks, quiet logs."""
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
            _module = lib
    return _module
