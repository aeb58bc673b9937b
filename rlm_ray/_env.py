"""Process-wide defaults that must be in place before litellm, tiktoken or Ray load.

Set with setdefault so a user's explicit environment always wins.
"""
from __future__ import annotations

import importlib.util
import os

# litellm's aiohttp pool allows 500 connections per host (1,000 in all) per
# process; a gateway process fanning out more calls than that would queue the
# rest unseen. The gateway's limiter bounds calls in flight, not the pool.
CONNECTIONS_PER_PROCESS = 4096


def _litellm_tokenizer_dir() -> str | None:
    # litellm ships tiktoken's cl100k_base BPE file; pointing tiktoken's cache
    # there keeps token counting offline (tiktoken would otherwise download it).
    spec = importlib.util.find_spec("litellm")
    if not spec or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "litellm_core_utils", "tokenizers")
    return path if os.path.isdir(path) else None


def apply_defaults() -> None:
    # litellm fetches its price map from the network at import unless told not to.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("AIOHTTP_CONNECTOR_LIMIT", str(CONNECTIONS_PER_PROCESS))
    os.environ.setdefault("AIOHTTP_CONNECTOR_LIMIT_PER_HOST", str(CONNECTIONS_PER_PROCESS))
    # Ray refuses `ray job submit` once ~/.ray/auth_token exists unless the mode is explicit.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        tok_dir = _litellm_tokenizer_dir()
        if tok_dir:
            os.environ["TIKTOKEN_CACHE_DIR"] = tok_dir
