"""`RLMActor`: a Ray actor hosting many RLM root loops at once (threads), and
the launchers that start child RLMs.

A question in flight costs one thread, its sandbox worker and its history, not
a Ray worker process (~120 MB each): the actor is started once and answers up
to HOST_MAX_QUESTIONS questions concurrently, each with its own sandbox,
budget, recorder and stop signal (all per-call objects in `answer_question`).
What the loops do share is process-wide and thread-safe: the sandbox spawner
thread, the gateway's private litellm event loop, and one Corpus handle per
corpus with its pool of query worker processes (corpus/query_pool.py), where
the questions' DuckDB work runs under a kernel memory cap.

num_cpus=0: an RLM mostly waits on models, and a 2-core node must host many.
Children of `rlm_query` run as more loops in the same actor (threads) unless
`reuse_actors=False`, which keeps the isolated one-actor-per-RLM mode (named
`rlm-child-<query_id>-*`, findable and killable one by one).
"""
from __future__ import annotations

import concurrent.futures
import functools
import os
import signal
import threading
import time
import uuid
from typing import Any

import psutil
import ray

from rlm_ray.engine.run import answer_question
from rlm_ray.engine.spec import Result, RunSpec
from rlm_ray.engine.subcalls import ChildJob, ChildOutcome
from rlm_ray.heap import freeze_startup_heap

NAMESPACE = "rlm_ray"
ROOT_NAME_PREFIX = "rlm-root-"
CHILD_NAME_PREFIX = "rlm-child-"
HOST_MAX_QUESTIONS = 512       # concurrent root loops (threads) one host actor accepts
MAX_CHILDREN_IN_FLIGHT = 8     # children of one rlm_query_batched call running at once
DEADLINE_GRACE_S = 60.0        # how long past the deadline we wait for a child to wrap up
PING_TIMEOUT_S = 10.0
# Fault injection for tests, off unless the host's environment sets the marker:
# a question whose text contains it SIGKILLs its host process after the delay.
# A labelled stand-in for what really kills a host under one question (a native
# crash, or the kernel's OOM killer, in host-side code the question drove);
# model code cannot do it from the sandbox.
FAULT_KILL_HOST_MARKER = "RLM_RAY_FAULT_KILL_HOST_MARKER"
FAULT_KILL_HOST_AFTER_S = "RLM_RAY_FAULT_KILL_HOST_AFTER_S"


def _injected_host_kill(question: str) -> None:
    marker = os.environ.get(FAULT_KILL_HOST_MARKER)
    if marker and marker in question:
        time.sleep(float(os.environ.get(FAULT_KILL_HOST_AFTER_S, "1")))
        os.kill(os.getpid(), signal.SIGKILL)


class _Corpora:
    """One Corpus handle per corpus per process: every question unpickles its
    own handle, and each would start its own query workers (tens of MB each
    once warm); the loops of one host share one handle and its worker pool."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[tuple, Any] = {}

    def shared(self, context: Any) -> Any:
        manifest = getattr(context, "manifest", None)
        if not isinstance(manifest, dict):
            return context      # a plain string, or anything that is not a Corpus
        shards = tuple(sorted(str(s.get("key") or s.get("file")) for s in
                              manifest.get("shards") or []))
        key = (context.uri, str(manifest.get("docs_file")), shards)
        with self._lock:
            return self._by_key.setdefault(key, context)


@ray.remote(num_cpus=0, max_concurrency=HOST_MAX_QUESTIONS, max_restarts=0)
class RLMActor:
    # State lives on the instance: Ray pickles this class by value, and a
    # module-level lock would not pickle.
    def __init__(self) -> None:
        self._in_flight = 0
        self._lock = threading.Lock()
        self._corpora = _Corpora()

    def answer(self, context: Any, question: str, query_id: str, spec: RunSpec) -> Result:
        with self._lock:
            self._in_flight += 1
        try:
            _injected_host_kill(question)
            return answer_question(self._corpora.shared(context), question, query_id, spec,
                                   functools.partial(launch_children, corpora=self._corpora))
        finally:
            with self._lock:
                self._in_flight -= 1

    def warm(self, context: Any = None, gateway: Any = None, models: tuple = ()) -> float:
        """Pay this host's one-time start-up before its first question, so the
        first wave of a batch costs what the second does: imports (litellm,
        tiktoken), litellm's first call, one query worker of the corpus, one
        sandbox start (its modules and bwrap in the page cache), this node's
        gateway actors and the models' limiter actors. Seconds spent, for figures."""
        started = time.monotonic()
        from rlm_ray.llm.gateway import warm_up
        from rlm_ray.tokens import count_tokens
        from sandbox import Sandbox

        warm_up()
        count_tokens("warm")
        if context is not None and not isinstance(context, str):
            from rlm_ray.corpus.query_pool import QuerySession

            QuerySession(self._corpora.shared(context).query_pool()).sql(
                "SELECT path FROM docs LIMIT 1", None, 60.0)
        with Sandbox(timeout_s=60) as sandbox:
            sandbox.run("pass")
        if gateway is not None:
            _warm_gateway(gateway, models)
        freeze_startup_heap()
        return time.monotonic() - started

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def in_flight(self) -> int:
        return self._in_flight

    def rss_bytes(self) -> int:
        return psutil.Process().memory_info().rss

    def sandbox_cpu_s(self) -> float:
        """CPU seconds of the sandbox workers this host has ended (their own
        tree cannot report it: they are killed, never reaped by a parent) and
        of its sandbox template's forks."""
        from sandbox.fork_server import templates_cpu_s
        from sandbox.process import ended_workers_cpu_s

        return ended_workers_cpu_s()[0] + templates_cpu_s()


def _warm_gateway(gateway: Any, models: tuple) -> None:
    from rlm_ray.llm.fanout import gateway_actors
    from rlm_ray.llm.limiter_client import _limits, limiter_actor

    pings = [a.ping.remote() for a in gateway_actors(gateway.gateway_actors)]
    if gateway.rpm or gateway.tpm:
        pings += [limiter_actor(gateway.limiter_key(m), _limits(gateway, m)).stats.remote()
                  for m in dict.fromkeys(models) if m]
    ray.get(pings, timeout=600)


def actor_name(prefix: str, key: str) -> str:
    return f"{prefix}{key}-{uuid.uuid4().hex[:6]}"


class ActorPool:
    """Idle RLMActors kept warm between `RLM.answer` calls of one process: a
    fresh actor costs a process start plus the litellm import (seconds on a
    busy node), a warm one ~1 ms. Each question still gets a fresh sandbox."""

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


def wait_timeout(spec: RunSpec) -> float | None:
    left = spec.budget.remaining_s()
    return None if left is None else max(0.0, left) + DEADLINE_GRACE_S


def launch_children(jobs: list[ChildJob], corpora: _Corpora | None = None) -> list[ChildOutcome]:
    """Child RLMs as more loops of this host (threads, each with its own
    sandbox), or, with reuse_actors=False, as one fresh named actor each."""
    if all(job.spec.settings.reuse_actors for job in jobs):
        return launch_in_threads(jobs, corpora or _Corpora())
    outcomes: list[ChildOutcome] = []
    for start in range(0, len(jobs), MAX_CHILDREN_IN_FLIGHT):
        outcomes.extend(_run_isolated_wave(jobs[start:start + MAX_CHILDREN_IN_FLIGHT]))
    return outcomes


def launch_in_threads(jobs: list[ChildJob], corpora: _Corpora) -> list[ChildOutcome]:
    """Children in this process: same code path as a root, threads instead of actors."""
    grandchildren = functools.partial(launch_in_threads, corpora=corpora)

    def one(job: ChildJob) -> ChildOutcome:
        try:
            return ChildOutcome(result=answer_question(corpora.shared(job.context), job.question,
                                                       job.query_id, job.spec, grandchildren))
        except Exception as exc:  # noqa: BLE001 - any failure is the parent model's to handle
            return ChildOutcome(error=f"{type(exc).__name__}: {_first_line(exc)}")

    if not jobs:
        return []
    workers = min(MAX_CHILDREN_IN_FLIGHT, len(jobs))
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="rlm-child") as pool:
        return list(pool.map(one, jobs))


def _run_isolated_wave(jobs: list[ChildJob]) -> list[ChildOutcome]:
    actors = [RLMActor.options(name=actor_name(CHILD_NAME_PREFIX, job.query_id),
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
