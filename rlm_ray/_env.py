"""Process-wide defaults that must be in place before litellm, tiktoken or Ray load.

Set with setdefault so a user's explicit environment always wins.
"""
from __future__ import annotations

import importlib.util
import os


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
    # Ray refuses `ray job submit` once ~/.ray/auth_token exists unless the mode is explicit.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        tok_dir = _litellm_tokenizer_dir()
        if tok_dir:
            os.environ["TIKTOKEN_CACHE_DIR"] = tok_dir
