"""Real token accounting for the simulator (cl100k_base, like `rlm_ray.tokens`).

Prompt tokens follow OpenAI's published chat formula so clients that estimate
with it (litellm's `token_counter`) agree with the `usage` the simulator reports:
3 tokens per message + its role and content (+1 and the name if named), + 3
tokens that prime the reply.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from rlm_ray.sim.registry import text_of
from rlm_ray.tokens import count_tokens, encoder

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


_CACHE_MIN_CHARS = 2048      # below this, counting is cheaper than hashing + lookup
_CACHE_MAX_ENTRIES = 50_000  # digests and ints only: a few MB at most


class _CountCache:
    """Token counts of long message contents, keyed by digest. An RLM root
    conversation resends its whole history every turn; recounting it would
    stall the event loop (~18 ms per 100 KB) for all in-flight requests."""

    def __init__(self) -> None:
        self._counts: OrderedDict[bytes, int] = OrderedDict()
        self._lock = threading.Lock()

    def count(self, text: str) -> int:
        if len(text) < _CACHE_MIN_CHARS:
            return count_tokens(text)
        key = hashlib.blake2b(text.encode(), digest_size=16).digest()
        with self._lock:
            if key in self._counts:
                self._counts.move_to_end(key)
                return self._counts[key]
        n = count_tokens(text)
        with self._lock:
            self._counts[key] = n
            if len(self._counts) > _CACHE_MAX_ENTRIES:
                self._counts.popitem(last=False)
        return n


_content_counts = _CountCache()


def message_tokens(message: dict) -> int:
    total = TOKENS_PER_MESSAGE + count_tokens(str(message.get("role", "")))
    total += _content_counts.count(text_of(message.get("content")))
    if message.get("name"):
        total += TOKENS_PER_NAME + count_tokens(str(message["name"]))
    return total


def boundary_tokens(messages: list[dict]) -> list[int]:
    """Prompt tokens up to and including each message (what a cached prefix holds)."""
    running, out = 0, []
    for message in messages:
        running += message_tokens(message)
        out.append(running)
    return out


def prompt_tokens(messages: list[dict]) -> int:
    return REPLY_PRIMING_TOKENS + sum(message_tokens(m) for m in messages)


def truncate_to_tokens(text: str, limit: int) -> tuple[str, int, bool]:
    """(text cut to at most `limit` tokens, its token count, whether it was cut)."""
    tokens = encoder().encode_ordinary(text)
    if len(tokens) <= limit:
        return text, len(tokens), False
    return encoder().decode(tokens[:limit]), limit, True
