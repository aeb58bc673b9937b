"""Value objects that cross process boundaries: what one RLM of a tree must know
(`RunSpec`, sent to every RLMActor) and what it gives back (`Result`)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from rlm_ray.engine.limits import TreeBudget
from rlm_ray.llm.config import GatewayConfig

STATUSES = ("ok", "error", "budget_exceeded", "timeout", "max_iterations")


@dataclass(frozen=True)
class EngineSettings:
    """Knobs of the loop itself (not budgets)."""

    view_chars: int = 20_000          # REPL output shown per code block (the official scaffold's)
    turn_view_chars: int = 30_000     # all blocks of one reply together (bounds history growth)
    max_rows: int = 5000              # context.sql / docs rows handed to the REPL
    max_read_chars: int = 2_000_000   # context.read characters handed to the REPL
    sub_window_tokens: int | None = None   # None: litellm's table, else DEFAULT_SUB_CONTEXT_TOKENS
    sandbox_timeout_s: float = 300.0  # per code block (also bounded by the deadline)
    temperature: float = 0.0          # deterministic calls: the response cache makes reruns free
    reuse_actors: bool = True         # keep RLMActors warm between questions (see ActorPool)


@dataclass(frozen=True)
class RunSpec:
    """One RLM of a tree: models, shared budget, its depth and where it hangs in the lineage."""

    model: str
    sub_model: str
    gateway: GatewayConfig
    budget: TreeBudget
    settings: EngineSettings = field(default_factory=EngineSettings)
    sandbox_opts: dict = field(default_factory=dict)
    depth: int = 0
    parent_call_id: str | None = None   # the `rlm` row of a child; None for the top root
    allowed_models: tuple[str, ...] = ()   # what `model=` may pick; () = only sub_model
    system_prompt: str | None = None    # a user's template (prompts.render_system_prompt)
    # Path globs of the corpus this question is about (corpus/scopes.py); () = all of it.
    # Children inherit it: a sub-RLM works inside its parent's scope.
    scope: tuple[str, ...] = ()

    def child(self, parent_call_id: str, model: str | None = None) -> "RunSpec":
        return replace(self, depth=self.depth + 1, parent_call_id=parent_call_id,
                       model=model or self.model)


@dataclass
class Result:
    answer: str | None
    status: str
    error: str | None
    iterations: int
    max_depth_reached: int
    usage: dict
    cost_usd: float | None
    wall_s: float
    calls: list[dict]
    steps: list[dict]
    model: str
    # Identity of a plain-text context (None over a corpus): the batch records
    # these instead of the text, so a changed context is visible in the tables.
    context_chars: int | None = None
    context_sha256: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def summary(self) -> str:
        u = self.usage
        cost = "n/a" if self.cost_usd is None else f"${self.cost_usd:.4f}"
        return (f"status={self.status} iterations={self.iterations} calls={u.get('llm_calls', 0)} "
                f"(root {u.get('root_calls', 0)}, sub {u.get('sub_calls', 0)}, "
                f"rlm {u.get('rlm_calls', 0)}) tokens={u.get('input_tokens', 0)}+"
                f"{u.get('output_tokens', 0)} cost={cost} wall={self.wall_s:.1f}s")
