"""Content-addressed response cache: one JSON object per distinct call, under a
cache URI (local directory or s3:// prefix) shared by every worker and run.

The key covers the model and everything that changes the output; transport
settings (api_base, api_key, timeout) are left out so a resumed run against
the same model on another endpoint still hits, and no credential is hashed
into a file name."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from rlm_ray import storage

# Parameters that never change what the model says (or are secrets).
_TRANSPORT_PARAMS = frozenset({
    "api_key", "api_base", "base_url", "timeout", "num_retries", "max_retries",
    "metadata", "user", "extra_headers", "headers", "stream_options",
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
})


def cache_key(model: str, messages: list[dict], params: dict[str, Any]) -> str:
    kept = {k: v for k, v in params.items() if k not in _TRANSPORT_PARAMS and v is not None}
    payload = json.dumps({"model": model, "messages": messages, "params": kept},
                         sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def is_deterministic(params: dict[str, Any]) -> bool:
    """temperature 0 (or a fixed seed) means a repeat should give the same answer."""
    return params.get("temperature") == 0 or params.get("seed") is not None


def should_cache(mode: str, params: dict[str, Any]) -> bool:
    return mode == "always" or (mode == "auto" and is_deterministic(params))


@dataclass
class ResponseCache:
    uri: str

    def __post_init__(self) -> None:
        self.uri = self.uri.rstrip("/")

    def _path(self, key: str) -> str:
        return storage.join(self.uri, key[:2], f"{key}.json")

    def get(self, key: str) -> dict | None:
        try:
            data = storage.read_bytes(self._path(key))
        except FileNotFoundError:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return None   # a foreign or damaged entry is a miss, and gets overwritten

    def put(self, key: str, value: dict) -> None:
        # Atomic (temp + rename locally, one PUT on S3): a reader never sees half an entry.
        storage.write_bytes_atomic(self._path(key), json.dumps(value, sort_keys=True).encode())


_caches: dict[str, ResponseCache] = {}


def cache_for(uri: str) -> ResponseCache:
    cache = _caches.get(uri)
    if cache is None:
        cache = _caches[uri] = ResponseCache(uri)
    return cache
