"""The RLM paper's published Table 1 (arXiv 2512.24601 v2): score and the
average API cost per query (+- its standard deviation), per model, method and
benchmark. Printed beside a run for reference only: the paper's RLM rows use
GPT-5-mini sub-calls under GPT-5, its costs are OpenAI (GPT-5) and Fireworks
(Qwen) prices, and a `*` marks runs that (sometimes) hit the context limit.
S-NIAH appears in the paper only as a plot (Figure 1), without a Table 1 row.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# Table 1's task lengths, as the paper states them.
TASK_LENGTH = {"longbench-codeqa": "23K-4.2M", "browsecomp-plus": "6M-11M",
               "oolong": "131K", "oolong-pairs": "32K"}
METHOD_LABEL = {"base": "Base Model", "rlm": "RLM", "rlm-no-sub": "RLM (no sub-calls)"}


@dataclass(frozen=True)
class PaperRow:
    model: str
    method: str                 # base | rlm | rlm-no-sub
    dataset: str
    score: float
    cost_mean: float | None     # None: the paper prints N/A
    cost_std: float | None
    hit_context_limit: bool = False

    def describe(self) -> str:
        star = "*" if self.hit_context_limit else ""
        cost = ("cost N/A" if self.cost_mean is None
                else f"${self.cost_mean:.2f} +- ${self.cost_std:.2f}/query")
        return f"{self.model} {METHOD_LABEL[self.method]}: {self.score:g}{star} ({cost})"


_COLUMNS = ("longbench-codeqa", "browsecomp-plus", "oolong", "oolong-pairs")
# (score, cost mean, cost std, hit context limit) per column; None cost = N/A.
_TABLE = {
    ("GPT-5", "base"): ((24.0, .13, .07, True), (0.0, None, None, True),
                        (44.0, .14, .02, False), (0.1, .16, .10, False)),
    ("GPT-5", "rlm"): ((62.0, .11, .10, False), (91.3, .99, 1.22, False),
                       (56.5, .43, .85, False), (58.0, .33, .20, False)),
    ("GPT-5", "rlm-no-sub"): ((58.0, .18, .56, False), (88.0, .44, .90, False),
                              (36.0, .37, .42, False), (43.9, .69, 1.16, False)),
    ("Qwen3-Coder-480B-A35B", "base"): ((20.0, .13, .08, True), (0.0, None, None, True),
                                        (36.0, .06, .00, False), (0.1, .05, .01, False)),
    ("Qwen3-Coder-480B-A35B", "rlm"): ((56.0, .92, 1.23, False), (44.7, .84, .63, False),
                                       (48.0, .61, .49, False), (23.1, 1.02, .52, False)),
    ("Qwen3-Coder-480B-A35B", "rlm-no-sub"): ((66.0, .18, .58, False), (46.0, .82, .69, False),
                                             (43.5, .32, .13, False), (17.3, 1.77, 1.23, False)),
    ("Qwen3-8B", "base"): ((4.0, .01, .00, True), (0.0, None, None, True),
                           (0.0, None, None, True), (0.1, .01, .00, False)),
    ("Qwen3-8B", "rlm"): ((26.0, .04, .13, False), (2.0, .03, .06, False),
                          (24.0, .19, .26, False), (4.3, .05, .05, False)),
}
PAPER_ROWS: tuple[PaperRow, ...] = tuple(
    PaperRow(model, method, dataset, *cell)
    for (model, method), cells in _TABLE.items() for dataset, cell in zip(_COLUMNS, cells))

# How a litellm model string names each of the paper's models (provider prefix
# and date suffix vary; `gpt-5-mini` / `gpt-5-nano` are other models).
_MODEL_PATTERNS = {
    "GPT-5": re.compile(r"(^|/)gpt-5(-\d{4}-\d{2}-\d{2})?$"),
    "Qwen3-Coder-480B-A35B": re.compile(r"qwen3-coder-480b(-a35b)?"),
    "Qwen3-8B": re.compile(r"(^|/)qwen3-8b$"),
}


def paper_model(model: str) -> str | None:
    name = model.strip().lower()
    for paper_name, pattern in _MODEL_PATTERNS.items():
        if pattern.search(name):
            return paper_name
    return None


def rows_for(dataset: str, method: str, model: str | None = None) -> list[PaperRow]:
    """The paper's rows for this benchmark and method (one model's, if named)."""
    return [r for r in PAPER_ROWS if r.dataset == dataset and r.method == method
            and (model is None or r.model == model)]
