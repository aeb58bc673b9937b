"""Many questions over one corpus: a pool of RLM actors writing the answers,
calls and steps tables, resumable, with progress and a results viewer.

`rlm_ray.batch.run(corpus_uri, queries_path, out_uri, rlm={...})`; see runner.py.
"""
from rlm_ray.batch.runner import Summary, run

__all__ = ["Summary", "run"]
