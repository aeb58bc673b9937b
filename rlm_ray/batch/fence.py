"""Fencing tokens on a results folder's table parts.

A driver writes under a lease generation (lease.py) and stamps it into every
part it writes (`part-<time>-<id>-g<N>.parquet`). A driver that stalls past
its lease (GC, SIGSTOP, a VM pause, a slow PUT) may still land a write that
passed its lease check before the pause; it must not count. So a taker, just
before it claims generation N, records which parts it admits from lower
generations (the fence `_lease/fence-<N>-<run_id>.json`), and readers count a
part when it carries no generation (written before fencing existed), carries
the current generation or a higher one, or is listed in the current fence.
A lower-generation part that appears after the takeover is ignored by every
reader, the taker included: it re-answers that question instead.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass

from rlm_ray import storage

COMMIT_TABLE = "answers"   # a question is finished once its answers part exists
LEASE_DIR = "_lease"
_GEN_WIDTH = 10
_PART_GEN = re.compile(r"-g(\d+)\.parquet$")


def part_name(generation: int | None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    suffix = f"-g{generation:0{_GEN_WIDTH}d}" if generation is not None else ""
    return f"part-{stamp}-{uuid.uuid4().hex[:12]}{suffix}.parquet"


def part_generation(name: str) -> int | None:
    match = _PART_GEN.search(name)
    return int(match.group(1)) if match else None


def committed_part_names(folder: str) -> list[str]:
    """Whole answers parts (temp files of an interrupted write start with .tmp-)."""
    names = [e.relpath for e in storage.list_prefix(storage.join(folder, COMMIT_TABLE))]
    return sorted(n for n in names if n.startswith("part-") and n.endswith(".parquet"))


@dataclass(frozen=True)
class Fence:
    generation: int            # the generation that wrote this fence when it took over
    parts: frozenset[str]      # lower-generation parts it admitted

    def admits(self, name: str) -> bool:
        generation = part_generation(name)
        return generation is None or generation >= self.generation or name in self.parts


def fence_uri(folder: str, generation: int, run_id: str) -> str:
    return storage.join(folder, LEASE_DIR, f"fence-{generation:0{_GEN_WIDTH}d}-{run_id}.json")


def write_fence(folder: str, fence: Fence, run_id: str) -> str:
    uri = fence_uri(folder, fence.generation, run_id)
    body = {"generation": fence.generation, "parts": sorted(fence.parts)}
    storage.write_bytes_atomic(uri, json.dumps(body).encode())
    return uri


def read_fence(folder: str, generation: int, run_id: str) -> Fence | None:
    """The fence the holder of `generation` wrote; None if it wrote none (a
    lease taken by an older version: then every part counts, as before)."""
    try:
        body = json.loads(storage.read_bytes(fence_uri(folder, generation, run_id)))
        return Fence(int(body["generation"]), frozenset(body["parts"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
