"""How the SIMULATOR bills prompt caching, per served model, like providers do.

Two billing styles, chosen by the price entry a served model is billed like
(`SimConfig.bill_like`, e.g. {"sim/rlm-policy": "gpt-5-mini"}):
- automatic (OpenAI-style): every prompt's message-boundary prefixes are
  remembered; a later prompt reads the longest one it starts with, reported as
  `prompt_tokens_details.cached_tokens`, only from 1024 tokens on and in
  128-token increments. Like OpenAI, cache hits depend on routing: requests
  with the same `prompt_cache_key` reach the same cache replica; requests
  without one land on one of `cache_replicas` replicas at random (seeded).
- breakpoints (Anthropic-style): only prefixes ending at a message marked with
  `cache_control` are written (`cache_creation_input_tokens`, from 1024 tokens
  on); a prompt reads (`cache_read_input_tokens`) the longest written prefix
  ending at a breakpoint or at one of the 20 message boundaries before its last
  breakpoint (one cache per model: no routing).
`prompt_tokens` is always the whole input, cached tokens included (litellm's
normalised usage). Models without a `bill_like` entry report no caching.
"""
from __future__ import annotations

import hashlib
import random
import threading
from collections import OrderedDict
from dataclasses import dataclass

from rlm_ray.sim.registry import text_of

MIN_CACHED_TOKENS = 1024
CACHE_INCREMENT = 128
LOOKBACK_BLOCKS = 20
MAX_PREFIXES = 200_000   # per replica: digests and ints only


def billing_style(like: str | None) -> str | None:
    """'breakpoints' for Claude-like entries, 'automatic' for the rest, None when unbilled."""
    if not like:
        return None
    return "breakpoints" if "claude" in like.lower() or like.startswith("anthropic/") else "automatic"


@dataclass(frozen=True)
class CacheUsage:
    cached_tokens: int = 0
    cache_write_tokens: int = 0

    def usage_fields(self, style: str | None) -> dict:
        if style == "automatic":
            return {"prompt_tokens_details": {"cached_tokens": self.cached_tokens}}
        if style == "breakpoints":
            return {"cache_read_input_tokens": self.cached_tokens,
                    "cache_creation_input_tokens": self.cache_write_tokens,
                    "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}
        return {}


def _marked(message: dict) -> bool:
    if message.get("cache_control"):
        return True
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(p, dict) and p.get("cache_control") for p in content)


def prefix_digests(messages: list[dict]) -> list[bytes]:
    """Digest of messages[:i+1] for every i; cache marks do not change a prefix."""
    digests, state = [], hashlib.blake2b(digest_size=16)
    for message in messages:
        state.update(str(message.get("role", "")).encode() + b"\x00")
        state.update(text_of(message.get("content")).encode() + b"\x01")
        digests.append(state.copy().digest())
    return digests


class _Store:
    def __init__(self) -> None:
        self.prefixes: OrderedDict[bytes, int] = OrderedDict()

    def get(self, digest: bytes) -> int | None:
        tokens = self.prefixes.get(digest)
        if tokens is not None:
            self.prefixes.move_to_end(digest)
        return tokens

    def put(self, digest: bytes, tokens: int) -> None:
        self.prefixes[digest] = tokens
        self.prefixes.move_to_end(digest)
        if len(self.prefixes) > MAX_PREFIXES:
            self.prefixes.popitem(last=False)


class PromptCache:
    """The prefixes one simulator has seen, per (model, replica)."""

    def __init__(self, replicas: int = 4, seed: int = 0) -> None:
        self.replicas = replicas
        self._rng = random.Random(f"cache-routing-{seed}")
        self._stores: dict[tuple[str, int], _Store] = {}
        self._lock = threading.Lock()

    def _replica(self, routing_key: str | None) -> int:
        if routing_key is None:
            return self._rng.randrange(self.replicas)
        return int.from_bytes(hashlib.blake2b(routing_key.encode(), digest_size=8).digest(),
                              "big") % self.replicas

    def bill(self, model: str, style: str | None, messages: list[dict],
             boundary_tokens: list[int], routing_key: str | None) -> CacheUsage:
        """`boundary_tokens[i]`: prompt tokens up to and including message i."""
        if style is None:
            return CacheUsage()
        digests = prefix_digests(messages)
        with self._lock:
            # Breakpoint caches are per account, not per machine: no routing.
            replica = self._replica(routing_key) if style == "automatic" else 0
            store = self._stores.setdefault((model, replica), _Store())
            if style == "automatic":
                return self._automatic(store, digests, boundary_tokens)
            return self._breakpoints(store, messages, digests, boundary_tokens)

    @staticmethod
    def _automatic(store: _Store, digests: list[bytes], tokens: list[int]) -> CacheUsage:
        seen = max((tokens[i] for i, d in enumerate(digests) if store.get(d) is not None), default=0)
        for digest, count in zip(digests, tokens):
            store.put(digest, count)
        if seen < MIN_CACHED_TOKENS:
            return CacheUsage()
        return CacheUsage(MIN_CACHED_TOKENS + (seen - MIN_CACHED_TOKENS) // CACHE_INCREMENT * CACHE_INCREMENT)

    @staticmethod
    def _breakpoints(store: _Store, messages: list[dict], digests: list[bytes],
                     tokens: list[int]) -> CacheUsage:
        marks = [i for i, m in enumerate(messages) if _marked(m)]
        if not marks:
            return CacheUsage()
        last = marks[-1]
        candidates = set(marks) | set(range(max(0, last - LOOKBACK_BLOCKS), last + 1))
        read = max((tokens[i] for i in candidates if store.get(digests[i]) is not None), default=0)
        writable = [i for i in marks if tokens[i] >= MIN_CACHED_TOKENS]
        for i in writable:
            store.put(digests[i], tokens[i])
        write_end = max((tokens[i] for i in writable), default=0)
        return CacheUsage(read, max(0, write_end - read))
