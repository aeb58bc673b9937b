"""rlm-ray: Recursive Language Models over massive corpora, as batch jobs on Ray."""
from rlm_ray._env import apply_defaults as _apply_defaults

_apply_defaults()

__version__ = "0.1.0"
