"""`RLMActor`: a Ray actor hosting one RLM (its sandbox, its root loop) for one
question at a time, and the launcher that starts child RLMs as more actors.

num_cpus=0: an RLM mostly waits on models, and a 2-core node must host many.
The question runs in one actor thread that also serves the sandbox's host
calls inline; max_concurrency > 1 only so `pid`/`rss_bytes` answer while a
question is running (benchmarks sample the actor's memory).
"""
from __future__ import annotations

import os
import threading
import uuid
from typing import Any

import psutil
import ray

from rlm_ray.engine.run import answer_question
from rlm_ray.engine.spec import Result, RunSpec
from rlm_ray.engine.subcalls import ChildJob, ChildOutcome

NAMESPACE = "rlm_ray"
ROOT_NAME_PREFIX = "rlm-root-"
CHILD_NAME_PREFIX = "rlm-child-"
MAX_CHILDREN_IN_FLIGHT = 8     # each child is a process (~120 MB): bound a batch's footprint
DEADLINE_GRACE_S = 60.0        # how long past the deadline we wait for a child to wrap up
PING_TIMEOUT_S = 10.0


@ray.remote(num_cpus=0, max_concurrency=4, max_restarts=0)
class RLMActor:
    def answer(self, context: Any, question: str, query_id: str, spec: RunSpec) -> Result:
        return answer_question(context, question, query_id, spec, launch_children)

    def pid(self) -> int:
        return os.getpid()

    def rss_bytes(self) -> int:
        return psutil.Process().memory_info().rss


def actor_name(prefix: str, key: str) -> str:
    return f"{prefix}{key}-{uuid.uuid4().hex[:6]}"


class ActorPool:
    """Idle RLMActors kept warm between questions: a fresh actor costs a process
    start plus the litellm import (seconds on a busy node), a warm one ~1 ms.
    Each question still gets a fresh sandbox and a fresh Corpus connection."""

    def __init__(self, max_idle: int) -> None:
        self.max_idle = max_idle
        self._idle: list = []
        self._lock = threading.Lock()

    def acquire(self, prefix: str, key: str, reuse: bool):
        """(actor, pooled). Non-reused actors carry `key` in their name (findable)."""
        while reuse:
            with self._lock:
                actor = self._idle.pop() if self._idle else None
            if actor is None:
                break
            try:
                ray.get(actor.pid.remote(), timeout=PING_TIMEOUT_S)
                return actor, True
            except Exception:  # noqa: BLE001 - died while idle: drop it, try the next
                continue
        name = actor_name(prefix, ("pool-" if reuse else "") + key)
        return RLMActor.options(name=name, namespace=NAMESPACE).remote(), reuse

    def release(self, actor, healthy: bool) -> None:
        with self._lock:
            if healthy and len(self._idle) < self.max_idle:
                self._idle.append(actor)
                return
        ray.kill(actor)


DRIVER_POOL = ActorPool(max_idle=2)
CHILD_POOL = ActorPool(max_idle=2)   # per parent actor process


def wait_timeout(spec: RunSpec) -> float | None:
    left = spec.budget.remaining_s()
    return None if left is None else max(0.0, left) + DEADLINE_GRACE_S


def launch_children(jobs: list[ChildJob]) -> list[ChildOutcome]:
    """Run child RLMs as actors, at most MAX_CHILDREN_IN_FLIGHT at a time; a
    dead or stuck child becomes an error outcome in its slot."""
    outcomes: list[ChildOutcome] = []
    for start in range(0, len(jobs), MAX_CHILDREN_IN_FLIGHT):
        outcomes.extend(_run_wave(jobs[start:start + MAX_CHILDREN_IN_FLIGHT]))
    return outcomes


def _run_wave(jobs: list[ChildJob]) -> list[ChildOutcome]:
    reuse = all(job.spec.settings.reuse_actors for job in jobs)
    actors = [CHILD_POOL.acquire(CHILD_NAME_PREFIX, job.query_id, reuse)[0] for job in jobs]
    refs = [actor.answer.remote(job.context, job.question, job.query_id, job.spec)
            for actor, job in zip(actors, jobs)]
    outcomes = []
    for actor, ref, job in zip(actors, refs, jobs):
        outcome = _await(ref, wait_timeout(job.spec))
        outcomes.append(outcome)
        CHILD_POOL.release(actor, healthy=reuse and outcome.result is not None)
    return outcomes


def _await(ref, timeout: float | None) -> ChildOutcome:
    try:
        return ChildOutcome(result=ray.get(ref, timeout=timeout))
    except ray.exceptions.GetTimeoutError:
        return ChildOutcome(error="child RLM did not finish within the wall-time limit")
    except ray.exceptions.RayActorError as exc:
        return ChildOutcome(error=f"child RLM actor died ({_first_line(exc)})")
    except Exception as exc:  # noqa: BLE001 - any failure is the parent model's to handle
        return ChildOutcome(error=f"{type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
