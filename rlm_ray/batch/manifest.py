"""`run.json`: what a result folder is (config without secrets, corpus,
queries file hash, counts, times, rlm-ray version). Written atomically at
start and again last, after the final table flush."""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import rlm_ray
from rlm_ray import storage

RUN_FILE = "run.json"
# Any setting whose name looks like a credential is dropped, whatever its value.
_SECRET_NAME = re.compile(r"(api_?key|secret|password|credential|session_token|^token$)", re.I)


def redact(config: Any) -> Any:
    """A copy of `config` with credential-looking keys removed, recursively."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if isinstance(config, dict):
        return {k: redact(v) for k, v in config.items() if not _SECRET_NAME.search(str(k))}
    if isinstance(config, (list, tuple)):
        return [redact(v) for v in config]
    if isinstance(config, (str, int, float, bool)) or config is None:
        return config
    return str(config)


def write_run_info(out_uri: str, info: dict, lease: Any = None) -> None:
    """With the folder's `lease` (batch/lease.py) the write is fenced: it carries
    the lease generation and never replaces a newer generation's run.json."""
    info = redact(dict(info, rlm_ray_version=rlm_ray.__version__))
    if lease is not None:
        lease.write_fenced(storage.join(out_uri, RUN_FILE), info)
        return
    data = json.dumps(info, indent=2, sort_keys=True, default=str).encode()
    storage.write_bytes_atomic(storage.join(out_uri, RUN_FILE), data)


def read_run_info(out_uri: str) -> dict | None:
    uri = storage.join(out_uri, RUN_FILE)
    if not storage.exists(uri):
        return None
    return json.loads(storage.read_bytes(uri))
