"""Token counts with a real tokenizer (tiktoken `cl100k_base`), offline.

`import rlm_ray` first: its process defaults point TIKTOKEN_CACHE_DIR at the
BPE file litellm ships, so no download is ever attempted.
"""
from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence

import rlm_ray  # noqa: F401  (TIKTOKEN_CACHE_DIR before tiktoken loads)

ENCODING = "cl100k_base"


@functools.cache
def encoder():
    import tiktoken

    return tiktoken.get_encoding(ENCODING)


MEMO_MIN_CHARS = 1024       # below this, counting is cheaper than a lookup
MEMO_MAX_ENTRIES = 50_000   # keys are (hash, length) pairs: a few MB at most, no text kept


class _Memo:
    """Counts of long texts. A root conversation is resent whole every turn,
    and the same messages are counted by the compaction check, the limiter's
    estimate and the simulator; tiktoken on 100 KB costs ~18 ms. Keyed by
    the string's own hash and length: cached on the object by Python, never
    a copy of the text (a collision only skews an estimate)."""

    def __init__(self) -> None:
        self._counts: OrderedDict[tuple[int, int], int] = OrderedDict()
        self._lock = threading.Lock()

    def count(self, text: str) -> int:
        key = (hash(text), len(text))
        with self._lock:
            n = self._counts.get(key)
            if n is not None:
                self._counts.move_to_end(key)
                return n
        n = _encode_len(text)
        with self._lock:
            self._counts[key] = n
            if len(self._counts) > MEMO_MAX_ENTRIES:
                self._counts.popitem(last=False)
        return n


_memo = _Memo()


def _encode_len(text: str) -> int:
    # Special-token strings in a corpus are plain text, never control tokens.
    return len(encoder().encode_ordinary(text))


def count_tokens(text: str) -> int:
    return _encode_len(text) if len(text) < MEMO_MIN_CHARS else _memo.count(text)


EXACT_MAX_CHARS = 1 << 20   # above this, tokens_about() extrapolates from a sample
SAMPLE_WINDOWS = 32
SAMPLE_WINDOW_CHARS = 4096


def tokens_about(text: str) -> tuple[int, bool]:
    """(tokens, exact?): exact up to EXACT_MAX_CHARS; above, extrapolated from
    evenly spaced windows (~1% off on uniform text). Counting 10M tokens exactly
    costs seconds of CPU, and a prompt's size hint does not need the last digit."""
    if len(text) <= EXACT_MAX_CHARS:
        return count_tokens(text), True
    step = len(text) // SAMPLE_WINDOWS
    sampled = [text[i * step:i * step + SAMPLE_WINDOW_CHARS] for i in range(SAMPLE_WINDOWS)]
    chars = sum(map(len, sampled))
    return round(len(text) * sum(map(_encode_len, sampled)) / chars), False


# OpenAI's published chat formula, which providers (and the simulator) bill by
# and clients that estimate with it (litellm's token_counter) agree with.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


def content_text(content) -> str:
    """Message content as plain text (OpenAI also allows a list of typed parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def message_tokens(message: dict) -> int:
    total = TOKENS_PER_MESSAGE + count_tokens(str(message.get("role", "")))
    total += count_tokens(content_text(message.get("content")))
    if message.get("name"):
        total += TOKENS_PER_NAME + count_tokens(str(message["name"]))
    return total


def chat_prompt_tokens(messages: list[dict]) -> int:
    """Prompt tokens of a chat request (cl100k: an estimate for other tokenizers)."""
    return REPLY_PRIMING_TOKENS + sum(message_tokens(m) for m in messages)


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
