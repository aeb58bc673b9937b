"""OpenAI-shaped response bodies (success, errors, stream chunks).

Error bodies follow OpenAI's `{"error": {message, type, param, code}}` so
litellm maps them to its usual exception classes (RateLimitError,
ContextWindowExceededError, AuthenticationError, NotFoundError, ...).
"""
from __future__ import annotations

import json
import math
import time
import uuid

from aiohttp import web

SIM_HEADERS = {"x-simulator": "rlm-ray"}


def error(status: int, message: str, type_: str, code: str | None = None,
          headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def rate_limited(retry_after_s: float, message: str) -> web.Response:
    # Both forms: `retry-after` must be whole seconds, `retry-after-ms` keeps precision.
    headers = {"retry-after": str(max(1, math.ceil(retry_after_s))),
               "retry-after-ms": str(max(1, math.ceil(retry_after_s * 1000)))}
    return error(429, message, "requests", "rate_limit_exceeded", headers)


def completion(model: str, text: str, prompt_tokens: int, completion_tokens: int,
               finish_reason: str, usage_extra: dict | None = None,
               service_tier: str | None = None) -> dict:
    body = {
        "id": f"chatcmpl-sim-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "rlm-ray-simulator",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish_reason,
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            **(usage_extra or {}),
        },
    }
    if service_tier:
        body["service_tier"] = service_tier
    return body


def stream_events(body: dict, include_usage: bool) -> list[bytes]:
    """The same answer as server-sent `chat.completion.chunk` events, then [DONE]."""
    choice = body["choices"][0]
    base = {"id": body["id"], "object": "chat.completion.chunk", "created": body["created"],
            "model": body["model"], "system_fingerprint": body["system_fingerprint"]}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                    "content": choice["message"]["content"]},
                              "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]},
    ]
    if include_usage:
        chunks.append({**base, "choices": [], "usage": body["usage"]})
    events = [f"data: {json.dumps(chunk)}\n\n".encode() for chunk in chunks]
    return events + [b"data: [DONE]\n\n"]
