"""The Table-1-style output: this run's row and the paper's published row(s)
beside it, as Markdown (stdout and `table.md`) and Parquet (`table.parquet`,
`per_query.parquet`), each written whole (temp name, then rename)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from rlm_ray.bench.paper.reference import METHOD_LABEL, TASK_LENGTH, PaperRow, paper_model, rows_for
from rlm_ray.bench.paper.run import Summary

SIMULATOR_BANNER = ("SIMULATOR: answers come from the provider simulator's scripted policy; "
                    "scores and costs (notional prices) say nothing about any model")


def reference_rows(summary: Summary) -> tuple[list[PaperRow], str]:
    """The paper's row for this model and method, or all its rows for the method, with a note."""
    if summary.dataset not in TASK_LENGTH:
        return [], "the paper reports this benchmark only as a plot (Figure 1), no Table 1 row"
    name = paper_model(summary.model)
    if name is not None:
        mine = rows_for(summary.dataset, summary.method, name)
        if mine:
            return mine, f"the paper's row for {name} ({METHOD_LABEL[summary.method]})"
    rows = rows_for(summary.dataset, summary.method)
    return rows, (f"no published row for {summary.model}; the paper's "
                  f"{METHOD_LABEL[summary.method]} rows for this benchmark, for reference")


def _money(value: float | None) -> str:
    return "n/a" if value is None else f"${value:.4f}"


def markdown(summary: Summary, title: str, simulated: bool) -> str:
    refs, note = reference_rows(summary)
    lines = [f"## {title}", ""]
    if simulated:
        lines += [f"**{SIMULATOR_BANNER}.**", ""]
    lines += ["| run | questions | score | mean $/query | p95 $/query | calls/query "
              "| wall/query (s) | statuses |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(summary.statuses.items()))
    label = "SIMULATOR " if simulated else ""
    lines.append(f"| {label}{METHOD_LABEL[summary.method]} ({summary.model}) | "
                 f"{summary.questions} | {summary.score:.1f} | {_money(summary.cost_mean)} | "
                 f"{_money(summary.cost_p95)} | {summary.calls_mean:.1f} | "
                 f"{summary.wall_mean_s:.1f} | {statuses} |")
    for ref in refs:
        star = "*" if ref.hit_context_limit else ""
        cost = ("N/A" if ref.cost_mean is None
                else f"${ref.cost_mean:.2f} (sd ${ref.cost_std:.2f})")
        lines.append(f"| paper: {ref.model} {METHOD_LABEL[ref.method]} | | {ref.score:g}{star} "
                     f"| {cost} | | | | |")
    lines += ["", f"Reference: {note}."]
    if summary.dataset in TASK_LENGTH:
        lines.append(f"Paper's task length: {TASK_LENGTH[summary.dataset]} tokens; `*` = the "
                     "method (sometimes) ran into the context limit; the paper's RLM rows use "
                     "GPT-5-mini sub-calls under GPT-5.")
    lines.append(f"Scoring: {summary.scoring}.")
    if summary.truncated:
        lines.append(f"Base model: {summary.truncated} context(s) cut to the model's window.")
    return "\n".join(lines) + "\n"


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)


def write_outputs(out: Path, summary: Summary, rows: list[dict], text: str,
                  simulated: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    refs, note = reference_rows(summary)
    table = [{**{k: v for k, v in asdict(summary).items() if k != "statuses"},
              "statuses": ", ".join(f"{k} {v}" for k, v in sorted(summary.statuses.items())),
              "row": "this run", "simulated": simulated, "cost_std": None}]
    table += [{"row": "paper", "dataset": r.dataset, "method": r.method, "model": r.model,
               "score": r.score, "cost_mean": r.cost_mean, "cost_std": r.cost_std,
               "simulated": False, "scoring": note} for r in refs]
    _atomic(out / "per_query.parquet", lambda p: pq.write_table(pa.Table.from_pylist(rows), p))
    _atomic(out / "table.parquet", lambda p: pq.write_table(pa.Table.from_pylist(table), p))
    _atomic(out / "table.md", lambda p: p.write_text(text, encoding="utf-8"))
