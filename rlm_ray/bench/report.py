"""Benchmark output people read: a Markdown table and a PNG plot per suite.
Both are written to a temp name and renamed, so a crashed run leaves the
previous figures rather than half of new ones."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from rlm_ray.bench.quality import SizeResult

COLUMNS = ("size (tokens)", "docs", "questions", "accuracy", "exact", "$/query", "calls/query",
           "wall/query s", "batch wall s", "root prompt tokens", "ingest s", "statuses")


def _money(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.5f}"


def table_rows(results: Sequence[SizeResult]) -> list[list[str]]:
    return [[f"{r.tokens:,}", str(r.documents), str(r.questions), f"{r.accuracy:.2f}",
             f"{r.exact_rate:.2f}", _money(r.cost_per_query), f"{r.calls_per_query:.1f}",
             f"{r.wall_per_query_s:.2f}", f"{r.batch_wall_s:.1f}", str(r.root_prompt_tokens),
             f"{r.ingest_s:.1f}", " ".join(f"{k}={v}" for k, v in sorted(r.statuses.items()))]
            for r in results]


def markdown_table(results: Sequence[SizeResult]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_table(results: Sequence[SizeResult], path: Path, title: str) -> None:
    _atomic_write(path, f"## {title}\n\n{markdown_table(results)}".encode())


def plot(results: Sequence[SizeResult], path: Path, title: str) -> None:
    """Accuracy, $/query and wall/query against corpus size (log2 axis)."""
    import io

    import matplotlib

    matplotlib.use("Agg")   # no display on servers; also keeps the CLI import-light
    import matplotlib.pyplot as plt

    x = [r.tokens for r in results]
    cost_known = all(r.cost_per_query is not None for r in results)
    panels = [("accuracy", [r.accuracy for r in results], (0, 1.05)),
              ("$ per query" if cost_known else "calls per query",
               [r.cost_per_query for r in results] if cost_known else [r.calls_per_query for r in results],
               None),
              ("wall s per query", [r.wall_per_query_s for r in results], None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(11, 3.2), dpi=90)
    for ax, (label, y, ylim) in zip(axes, panels):
        ax.plot(x, y, marker="o")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("corpus tokens")
        ax.set_title(label, fontsize=10)
        ax.grid(True, alpha=0.3)
        if ylim:
            ax.set_ylim(*ylim)
        else:
            ax.set_ylim(bottom=0)   # small variations must not look like big ones
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    _atomic_write(path, buffer.getvalue())
