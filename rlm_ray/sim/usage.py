"""Real token accounting for the simulator (cl100k_base, like `rlm_ray.tokens`).

Prompt tokens follow OpenAI's published chat formula so clients that estimate
with it (litellm's `token_counter`) agree with the `usage` the simulator reports:
3 tokens per message + its role and content (+1 and the name if named), + 3
tokens that prime the reply.
"""
from __future__ import annotations

from rlm_ray.tokens import encoder, message_tokens


def boundary_tokens(messages: list[dict]) -> list[int]:
    """Prompt tokens up to and including each message (what a cached prefix holds)."""
    running, out = 0, []
    for message in messages:
        running += message_tokens(message)
        out.append(running)
    return out


def truncate_to_tokens(text: str, limit: int) -> tuple[str, int, bool]:
    """(text cut to at most `limit` tokens, its token count, whether it was cut)."""
    tokens = encoder().encode_ordinary(text)
    if len(tokens) <= limit:
        return text, len(tokens), False
    return encoder().decode(tokens[:limit]), limit, True
