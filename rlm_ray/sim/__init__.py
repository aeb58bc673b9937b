"""The provider SIMULATOR: an OpenAI-compatible HTTP server on loopback with
latency, RPM/TPM limits (429 + Retry-After), injected faults and deterministic
scripted policies. Not a model provider; every response says so
(`x-simulator: rlm-ray`)."""
from rlm_ray.sim.config import FAULT_KINDS, SimConfig
from rlm_ray.sim.registry import POLICIES, Policy, load_policies, register_policy
from rlm_ray.sim.server import SimServer, fetch_stats, resolve_model

load_policies()

__all__ = ["FAULT_KINDS", "POLICIES", "Policy", "SimConfig", "SimServer", "fetch_stats",
           "load_policies", "register_policy", "resolve_model"]
