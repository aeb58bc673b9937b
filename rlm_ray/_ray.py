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
