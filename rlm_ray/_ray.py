"""One way to get a Ray connection: join the cluster named by an explicit
address or RAY_ADDRESS (a cluster, or the one a `ray job` runs in), otherwise
start a small local instance of our own.

Never a bare `ray.init()`: it joins whatever cluster the machine's Ray session
file (/tmp/ray/ray_current_cluster) names, so a cluster that died without
`ray stop` keeps a new run retrying its dead address, and a live unrelated one
is joined silently. `address="local"` always starts a fresh instance.
"""
from __future__ import annotations

import os
import sys

import ray

LOCAL = "local"


def ray_target(address: str | None = None) -> str:
    """Where `ensure_ray(address)` would connect: an address, or "local"."""
    return address or os.environ.get("RAY_ADDRESS") or LOCAL


def describe_target(address: str | None = None) -> str:
    """One line for the first progress line of batch and bench commands."""
    target = ray_target(address)
    if target == LOCAL:
        return "ray: starting a local instance (set RAY_ADDRESS to use a cluster)"
    source = "" if address else " (RAY_ADDRESS)"
    return f"ray: joining the cluster at {target}{source}"


def ensure_ray(address: str | None = None, announce: bool = True, **init_kwargs) -> None:
    """Connect once per process. The line saying local or which cluster is
    printed BEFORE connecting, so a wait on an unreachable address names it."""
    if ray.is_initialized():
        return
    target = ray_target(address)
    if announce:
        print(describe_target(address), file=sys.stderr, flush=True)
    kwargs = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
    kwargs.update(init_kwargs)
    ray.init(address=target, **kwargs)


def on_head_node() -> dict:
    """Actor options that place a cluster-wide singleton (budget bank, rate
    limiters) on the head node: losing a worker node must not restart it empty
    elsewhere, and the head's loss ends the cluster anyway. Hard affinity: a
    soft one was seen landing on a worker node while the head was idle, and
    these actors ask for no CPU, so the head (even with num_cpus=0) has room."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)}
    return {}
