"""Real token accounting for the simulator (cl100k_base, like `rlm_ray.tokens`).

Prompt tokens follow OpenAI's published chat formula so clients that estimate
with it (litellm's `token_counter`) agree with the `usage` the simulator reports:
3 tokens per message + its role and content (+1 and the name if named), + 3
tokens that prime the reply.
"""
from __future__ import annotations

from rlm_ray.sim.registry import text_of
from rlm_ray.tokens import count_tokens, encoder

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


def prompt_tokens(messages: list[dict]) -> int:
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE
        total += count_tokens(str(message.get("role", "")))
        total += count_tokens(text_of(message.get("content")))
        if message.get("name"):
            total += TOKENS_PER_NAME + count_tokens(str(message["name"]))
    return total


def truncate_to_tokens(text: str, limit: int) -> tuple[str, int, bool]:
    """(text cut to at most `limit` tokens, its token count, whether it was cut)."""
    tokens = encoder().encode_ordinary(text)
    if len(tokens) <= limit:
        return text, len(tokens), False
    return encoder().decode(tokens[:limit]), limit, True
