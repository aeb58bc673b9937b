"""Prompt caching as a gateway parameter: `complete(..., prompt_cache="auto")`.

Providers cache a prompt's prefix in one of two ways:
- automatic prefix caching (OpenAI, Gemini, DeepSeek): nothing to mark; a
  stable `prompt_cache_key` (OpenAI) routes the turns of one conversation to
  the same cache, so every turn after the first reads the prefix it shares
  with the previous one;
- explicit breakpoints (Anthropic's Claude, wherever served): a
  `cache_control` mark on a content block caches the prefix up to it. We mark
  the system prompt (shared by every question) and the latest message (the
  whole history so far, read back by the next turn).
The caller's messages are never modified (copies are marked), and the marks
never enter the response-cache key: `auto` and `off` share cached answers."""
from __future__ import annotations

import hashlib
import json

from rlm_ray.llm.config import GatewayConfig
from rlm_ray.llm.cost import provider_family

EPHEMERAL = {"type": "ephemeral"}


def _marked(message: dict) -> dict:
    content = message.get("content")
    if isinstance(content, str):
        parts = [{"type": "text", "text": content}]
    elif isinstance(content, list) and content and isinstance(content[-1], dict):
        parts = [dict(p) for p in content]
    else:
        return message
    parts[-1] = {**parts[-1], "cache_control": EPHEMERAL}
    return {**message, "content": parts}


def conversation_key(messages: list[dict]) -> str:
    """Stable across the turns of one conversation: its first two messages
    (system prompt and question) never change once sent."""
    head = json.dumps(messages[:2], sort_keys=True, ensure_ascii=False)
    return "rlm-" + hashlib.sha256(head.encode()).hexdigest()[:24]


def apply(messages: list[dict], params: dict, model: str, config: GatewayConfig,
          mode: str | None) -> tuple[list[dict], dict]:
    """(messages, params) to send for `mode` ('auto' | 'off' | None = off)."""
    if mode != "auto":
        return messages, params
    if provider_family(model, config) == "anthropic":
        marks = {len(messages) - 1}
        if messages[0].get("role") == "system":
            marks.add(0)
        return [_marked(m) if i in marks else m for i, m in enumerate(messages)], params
    if "prompt_cache_key" in params:
        return messages, params
    return messages, {**params, "prompt_cache_key": conversation_key(messages)}
