"""Token counts with a real tokenizer (tiktoken `cl100k_base`), offline.

`import rlm_ray` first: its process defaults point TIKTOKEN_CACHE_DIR at the
BPE file litellm ships, so no download is ever attempted.
"""
from __future__ import annotations

import functools
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

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

    def peek(self, text: str) -> int | None:
        """The count if this text was counted before, without counting it."""
        with self._lock:
            return self._counts.get((hash(text), len(text)))

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


def _extrapolate(text: str, windows: int, window_chars: int) -> float:
    """Tokens of `text` from `windows` evenly spaced windows, the first at the
    start and the last at the end."""
    step = (len(text) - window_chars) / max(1, windows - 1)
    sampled = [text[round(i * step):round(i * step) + window_chars] for i in range(windows)]
    return len(text) * sum(map(_encode_len, sampled)) / sum(map(len, sampled))


def tokens_about(text: str) -> tuple[int, bool]:
    """(tokens, exact?): exact up to EXACT_MAX_CHARS; above, extrapolated from
    evenly spaced windows (~1% off on uniform text). Counting 10M tokens exactly
    costs seconds of CPU, and a prompt's size hint does not need the last digit."""
    if len(text) <= EXACT_MAX_CHARS:
        return count_tokens(text), True
    return round(_extrapolate(text, SAMPLE_WINDOWS, SAMPLE_WINDOW_CHARS)), False


ESTIMATE_EXACT_CHARS = 2048   # texts up to this size are counted exactly
ESTIMATE_WINDOW_CHARS = 256    # longer ones: a window per ESTIMATE_EXACT_CHARS, at least the
ESTIMATE_WINDOWS = (2, 16)     # first and the last, at most 16 (an eighth of a text of 4 KB+)
ESTIMATE_MARGIN = 1.1


def estimate_tokens(text: str) -> int:
    """What a rate limiter books for `text`: exact when short or counted before;
    otherwise extrapolated from a few windows and leaning high (ESTIMATE_MARGIN),
    but never above the UTF-8 length (no token is shorter than a byte).

    Why not always exact: tiktoken costs ~0.1 ms per KB, a large share of a
    model call's CPU for an 8 KB sub-call prompt, and a limiter only needs a
    figure that real usage corrects when the call settles. It is an estimate
    anyway for every provider whose tokenizer is not cl100k."""
    if len(text) <= ESTIMATE_EXACT_CHARS:
        return count_tokens(text)
    known = _memo.peek(text)
    if known is not None:
        return known
    fewest, most = ESTIMATE_WINDOWS
    windows = min(most, max(fewest, len(text) // ESTIMATE_EXACT_CHARS))
    guess = ESTIMATE_MARGIN * _extrapolate(text, windows, ESTIMATE_WINDOW_CHARS)
    return min(math.ceil(guess), len(text.encode("utf-8", "replace")))


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


def message_tokens(message: dict, count_content: Callable[[str], int] = count_tokens) -> int:
    total = TOKENS_PER_MESSAGE + count_tokens(str(message.get("role", "")))
    total += count_content(content_text(message.get("content")))
    if message.get("name"):
        total += TOKENS_PER_NAME + count_tokens(str(message["name"]))
    return total


def chat_prompt_tokens(messages: list[dict]) -> int:
    """Prompt tokens of a chat request (cl100k: an estimate for other tokenizers)."""
    return REPLY_PRIMING_TOKENS + sum(message_tokens(m) for m in messages)


def chat_prompt_estimate(messages: list[dict]) -> int:
    """chat_prompt_tokens with estimate_tokens() for long contents: for rate limiting."""
    return REPLY_PRIMING_TOKENS + sum(message_tokens(m, estimate_tokens) for m in messages)


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
