"""One way to get a Ray connection: join RAY_ADDRESS (a cluster or a `ray job`)
when set, otherwise start a small local instance."""
from __future__ import annotations

import os

import ray


def ensure_ray(address: str | None = None, **init_kwargs) -> None:
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
    kwargs.update(init_kwargs)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(**kwargs)


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
