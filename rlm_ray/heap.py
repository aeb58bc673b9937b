"""The garbage collector's settings for the processes that carry calls in flight.

A gateway or host actor imports litellm, Ray and pyarrow: ~430k objects that
live as long as the process. Each call in flight then allocates hundreds of
short-lived ones, so the collector runs often, and every oldest-generation
pass walks all the start-up objects again to find nothing. On a wave of 1,024
calls in one process that was 20-25% of the process's CPU. Freezing what
start-up left moves it out of the collector's sight (it is never freed anyway),
and a larger young-generation threshold makes the young passes fewer.

Only for processes rlm-ray owns (its Ray actors): a library has no business
changing its caller's collector.
"""
from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000   # CPython's default is 700 allocations between young passes


def freeze_startup_heap() -> None:
    gc.collect()
    gc.freeze()
    young, middle, oldest = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_THRESHOLD), middle, oldest)
