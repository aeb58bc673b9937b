"""Token counts with a real tokenizer (tiktoken `cl100k_base`), offline.

`import rlm_ray` first: its process defaults point TIKTOKEN_CACHE_DIR at the
BPE file litellm ships, so no download is ever attempted.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import rlm_ray  # noqa: F401  (TIKTOKEN_CACHE_DIR before tiktoken loads)

ENCODING = "cl100k_base"


@functools.cache
def encoder():
    import tiktoken

    return tiktoken.get_encoding(ENCODING)


def count_tokens(text: str) -> int:
    # Special-token strings in a corpus are plain text, never control tokens.
    return len(encoder().encode_ordinary(text))


def count_tokens_batch(texts: Sequence[str], num_threads: int | None = None) -> list[int]:
    """Counts for many texts; tiktoken releases the GIL, so threads scale."""
    if not texts:
        return []
    threads = num_threads or max(1, os.cpu_count() or 1)
    return [len(ids) for ids in encoder().encode_ordinary_batch(list(texts), num_threads=threads)]


def count_lines(lines: Sequence[str]) -> list[int]:
    """Per-line counts in one thread: cheaper than a thread pool per tiny string."""
    encode = encoder().encode_ordinary
    return [len(encode(line)) for line in lines]
