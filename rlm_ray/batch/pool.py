"""The batch's RLM host actors: a few processes (by default one per node,
placed round-robin over the alive nodes; replacements with SPREAD) that each run many questions at once, so concurrency is a
number of questions, not of processes. Hosts reserve no CPU (their work is
waiting on models and the sandbox) and are started once per pool: a caller
running several batches (a pipeline, a benchmark's waves) passes one pool to
each and pays actor start-up once.

Every question gets a fresh sandbox inside its host, so a retried question
always starts on a clean REPL. A host that dies (its process or its node)
fails only its own in-flight questions (the runner retries them elsewhere) and
is replaced; a host with a stuck question is retired: it takes no new work and
is killed once its other questions are done.

Dedicated hosts run one suspect question at a time (a question that was in
flight at two host deaths, see driver.py) and nothing else, so a third death
there is its own. At most DEDICATED_HOSTS exist at once; one that survives its
question runs the next suspect (each question gets a fresh sandbox anyway),
so many suspects cost a few actor start-ups, not one each.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rlm_ray.batch.queries import Query

HOST_QUESTIONS = 128   # questions per host before the pool adds another host
DEDICATED_HOSTS = 2    # hosts running one suspect each, at most, at any time


@dataclass(eq=False)
class Host:
    actor: Any
    load: int = 0
    retired: bool = False
    warmed: bool = False
    answered: int = 0
    node_id: str | None = None
    dedicated: bool = False     # runs one suspect question at a time, nothing else
    trees: dict = field(default_factory=dict)   # ref -> TreeBudget of a question in flight


BANK_RESTART_WAIT_S = 120.0


def _open_tree(tree_budget: Any, limits: Any) -> Any:
    """A question's budgets live in the cluster's budget-bank actor; when its
    node was just lost the bank is restarting elsewhere: wait for it rather
    than fail the batch."""
    import time

    import ray.exceptions as rex

    deadline = time.monotonic() + BANK_RESTART_WAIT_S
    while True:
        try:
            return tree_budget.open(limits)
        except (rex.ActorUnavailableError, rex.RayActorError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _alive_nodes() -> list[str]:
    import ray

    return sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))


def default_host_count(concurrency: int) -> int:
    """One host per alive node, more when one host would carry > HOST_QUESTIONS."""
    nodes = len(_alive_nodes())
    return max(1, min(concurrency, max(nodes, math.ceil(concurrency / HOST_QUESTIONS))))


class HostPool:
    def __init__(self, hosts: int | None = None, concurrency: int = 8,
                 actor_env: dict[str, str] | None = None) -> None:
        """`actor_env`: extra environment variables of every host process
        (tests use it to arm the engine's fault injection, engine/actor.py)."""
        from rlm_ray._ray import ensure_ray

        ensure_ray()
        self.actor_env = dict(actor_env or {})
        self._dedicated: list[Host] = []
        self.size = hosts or default_host_count(concurrency)
        # Round-robin over the alive nodes, pinned (SPREAD alone, or a soft
        # affinity, was seen to put every host on one node); a host whose node
        # is gone fails like a dead host and its replacement goes anywhere (SPREAD).
        nodes = _alive_nodes()
        self._hosts: list[Host] = [self._new_host(nodes[i % len(nodes)] if nodes else None)
                                   for i in range(self.size)]
        self.answered_by_node: dict[str, int] = {}

    def _new_host(self, node_id: str | None = None) -> Host:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from rlm_ray.engine.actor import RLMActor

        strategy = (NodeAffinitySchedulingStrategy(node_id, soft=False) if node_id else "SPREAD")
        options: dict[str, Any] = {"num_cpus": 0, "scheduling_strategy": strategy}
        if self.actor_env:
            options["runtime_env"] = {"env_vars": self.actor_env}
        return Host(RLMActor.options(**options).remote())

    def warm(self, corpus: Any = None, rlm: dict | None = None) -> None:
        """Every host pays its start-up (process, imports, DuckDB, a first
        sandbox) now, not inside its first questions. A host that fails here
        fails its first question instead, where the runner handles it."""
        import ray

        rlm = rlm or {}
        gateway = rlm.get("gateway")
        if gateway is not None and rlm.get("api_base"):
            from dataclasses import replace

            gateway = replace(gateway, api_base=rlm["api_base"])   # as RLM(...) does
        models = (rlm.get("model"), rlm.get("sub_model") or rlm.get("model"))
        refs = [h.actor.warm.remote(corpus, gateway, models) for h in self._hosts if not h.warmed]
        for host in self._hosts:
            host.warmed = True
        try:
            ray.get(refs, timeout=600)
        except Exception:  # noqa: BLE001
            pass

    @property
    def hosts(self) -> list[Host]:
        return list(self._hosts)

    def pick(self) -> Host:
        """The least loaded host still taking work."""
        return min((h for h in self._hosts if not h.retired), key=lambda h: h.load)

    def dedicated_host(self) -> Host | None:
        """An idle dedicated host (started if fewer than DEDICATED_HOSTS exist), or
        None while every one is busy."""
        idle = next((h for h in self._dedicated if h.load == 0 and not h.retired), None)
        if idle is None and len(self._dedicated) < DEDICATED_HOSTS:
            idle = self._new_host()
            idle.dedicated = True
            self._dedicated.append(idle)
        return idle

    def submit(self, host: Host, corpus: Any, query: Query, settings: dict) -> Any:
        """Start one question; its tree budget (and so its deadline) opens now,
        not when it was queued."""
        from rlm_ray.engine import RLM
        from rlm_ray.engine.limits import TreeBudget
        from rlm_ray.engine.spec import RunSpec

        rlm = RLM(**settings)   # validates the settings the same way `rlm-ray query` does
        tree = _open_tree(TreeBudget, rlm.limits)
        spec = RunSpec(model=rlm.model, sub_model=rlm.sub_model, gateway=rlm.gateway,
                       budget=tree, settings=rlm.settings, sandbox_opts=rlm.sandbox_opts,
                       allowed_models=rlm.allowed_models, system_prompt=rlm.system_prompt,
                       output_schema=rlm.output_schema,
                       scope=tuple(query.scope or ()))
        ref = host.actor.answer.remote(corpus, query.question, query.query_id, spec)
        host.trees[ref] = tree
        host.load += 1
        return ref

    def finished(self, host: Host, ref: Any) -> None:
        """A question of `host` ended with a result."""
        self._close(host, ref)
        host.answered += 1
        if host.node_id is None:
            host.node_id = self._node_of(host)
        if host.node_id:
            self.answered_by_node[host.node_id] = self.answered_by_node.get(host.node_id, 0) + 1
        self._reap(host)

    def failed(self, host: Host, ref: Any, *, host_lost: bool, stuck: bool = False) -> None:
        """A question of `host` broke: the host died (replace it), or the
        question is stuck past its wall limit (retire the host), or the call
        itself failed (the host is fine)."""
        self._close(host, ref)
        if (host_lost or stuck) and not host.retired:
            host.retired = True
            if not host.dedicated:   # dedicated hosts are started on demand
                self._hosts.append(self._new_host())
        if host_lost:
            self._kill(host)
        else:
            self._reap(host)

    @staticmethod
    def _close(host: Host, ref: Any) -> None:
        tree = host.trees.pop(ref, None)
        host.load = max(0, host.load - 1)
        if tree is not None:
            tree.close()

    def _reap(self, host: Host) -> None:
        if host.retired and host.load == 0:
            self._kill(host)

    def _kill(self, host: Host) -> None:
        import ray

        for hosts in (self._hosts, self._dedicated):
            if host in hosts:
                hosts.remove(host)
        for tree in host.trees.values():
            tree.close()
        host.trees.clear()
        try:
            ray.kill(host.actor, no_restart=True)
        except Exception:  # noqa: BLE001  (already dead: nothing to kill)
            pass

    @staticmethod
    def _node_of(host: Host) -> str | None:
        import ray

        try:
            return ray.get(host.actor.node_id.remote(), timeout=10)
        except Exception:  # noqa: BLE001  (figures only: a dead host has no node to report)
            return None

    def pids(self) -> list[int]:
        """Host process ids (for memory figures); dead hosts are skipped."""
        import ray

        refs = [h.actor.pid.remote() for h in self._hosts + self._dedicated]
        pids = []
        for ref in refs:
            try:
                pids.append(ray.get(ref, timeout=10))
            except Exception:  # noqa: BLE001
                continue
        return pids

    @staticmethod
    def is_host_loss(exc: BaseException) -> bool:
        import ray.exceptions as rex

        return isinstance(exc, rex.RayActorError | rex.ActorUnavailableError)

    @staticmethod
    def describe_error(exc: BaseException) -> str:
        """One line for the dead-letter row: the cause, not a Ray traceback."""
        import ray.exceptions as rex

        if isinstance(exc, rex.ActorDiedError | rex.ActorUnavailableError | rex.RayActorError):
            text = "the RLM host actor died (process or node lost)"
        elif isinstance(exc, rex.RayTaskError):
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            text = f"{type(cause).__name__}: {cause}"
        else:
            text = f"{type(exc).__name__}: {exc}"
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return first[:500]

    def shutdown(self) -> None:
        for host in self._hosts + self._dedicated:
            self._kill(host)
        self._hosts, self._dedicated = [], []
