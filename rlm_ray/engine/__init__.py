"""The RLM engine: root loop, REPL host functions, budgets, trajectories, RLMActor.

`RLM(model, ...).answer(corpus_or_text, question) -> Result`.
"""
from rlm_ray.engine.limits import Limits
from rlm_ray.engine.rlm import RLM
from rlm_ray.engine.spec import EngineSettings, Result

__all__ = ["RLM", "EngineSettings", "Limits", "Result"]
