"""cluster.yaml is a valid Ray autoscaler config for AWS, checked offline."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import yaml

import ray.autoscaler
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


def _config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_matches_rays_schema():
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(_config(), schema)


def test_rays_own_prepare_and_validate_accept_it():
    prepared = prepare_config(copy.deepcopy(_config()))   # merges AWS defaults; no AWS calls
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]
    workers = [n for n in prepared["available_node_types"] if n != prepared["head_node_type"]]
    assert workers and all(prepared["available_node_types"][w]["max_workers"] > 0 for w in workers)


def test_setup_installs_sandbox_and_package_and_sets_auth_mode():
    config = _config()
    setup = "\n".join(config["setup_commands"])
    assert "bubblewrap" in setup and "libseccomp" in setup
    assert "~/rlm-ray" in setup and config["file_mounts"]["~/rlm-ray"] == "."
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=" in c for c in starts), key
    assert ".venv" in config["rsync_exclude"]


def test_a_broken_config_is_rejected():
    broken = _config()
    broken["available_node_types"]["cpu_worker"]["node_config_typo"] = {}
    try:
        jsonschema.validate(broken, json.loads(
            (Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text()))
    except jsonschema.ValidationError:
        return
    raise AssertionError("the schema should reject an unknown node type key")
