"""`RLMActor`: a Ray actor hosting one RLM (its sandbox, its root loop) for one
question at a time, and the launcher that starts child RLMs as more actors.

num_cpus=0: an RLM mostly waits on models, and a 2-core node must host many.
The question runs in one actor thread that also serves the sandbox's host
calls inline; max_concurrency > 1 only so `pid`/`rss_bytes` answer while a
question is running (benchmarks sample the actor's memory).
"""
from __future__ import annotations

import os
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
    actors = [RLMActor.options(name=actor_name(CHILD_NAME_PREFIX, job.spec.parent_call_id),
                               namespace=NAMESPACE).remote() for job in jobs]
    refs = [actor.answer.remote(job.context, job.question, job.query_id, job.spec)
            for actor, job in zip(actors, jobs)]
    outcomes = []
    for actor, ref, job in zip(actors, refs, jobs):
        outcomes.append(_await(ref, wait_timeout(job.spec)))
        ray.kill(actor)
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
