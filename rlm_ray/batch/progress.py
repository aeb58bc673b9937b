"""Batch progress: a live rich bar on a terminal, plain periodic lines
otherwise (so `ray job logs` and CI logs show the same numbers), and the
final summary table."""
from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

from rlm_ray.batch.billing_text import usd_total


@dataclass
class Tally:
    """Running totals of a batch, fed one finished answer row at a time."""

    total: int
    skipped: int = 0
    done: int = 0
    in_flight: int = 0
    cost_usd: float = 0.0        # over answers with a known price (budgets compare this)
    priced: int = 0              # answers with a dollar figure
    unpriced: int = 0            # answers whose model has no known price (cost None)
    tokens: int = 0
    llm_calls: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    cache_saved_usd: float = 0.0
    statuses: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def record(self, answer: dict) -> None:
        self.done += 1
        if answer.get("cost_usd") is None:
            self.unpriced += 1
        else:
            self.priced += 1
            self.cost_usd += answer["cost_usd"]
        self.tokens += (answer.get("input_tokens") or 0) + (answer.get("output_tokens") or 0)
        self.llm_calls += answer.get("llm_calls") or 0
        self.input_tokens += answer.get("input_tokens") or 0
        self.cached_tokens += answer.get("cached_tokens") or 0
        self.cache_saved_usd += answer.get("cache_saved_usd") or 0.0
        self.statuses[answer.get("status") or "error"] += 1

    def cost_figures(self, estimated_usd) -> dict:
        """This run's caching figures and the dry-run estimate, for the summary."""
        share = self.cached_tokens / self.input_tokens if self.input_tokens else 0.0
        return {"cached_share": share, "cache_saved_usd": self.cache_saved_usd,
                "estimated_cost_usd": estimated_usd, "priced_answers": self.priced,
                "unpriced_answers": self.unpriced}

    def cost_text(self) -> str:
        return usd_total(self.cost_usd, self.priced, self.unpriced)

    @property
    def todo(self) -> int:
        return self.total - self.skipped

    def eta_s(self) -> float | None:
        elapsed = time.monotonic() - self.started
        if not self.done or elapsed <= 0:
            return None
        return (self.todo - self.done) * elapsed / self.done

    def line(self) -> str:
        eta = self.eta_s()
        eta_text = f"{eta:.0f}s" if eta is not None else "?"
        return (f"done {self.done + self.skipped}/{self.total} (skipped {self.skipped}) | "
                f"{self.cost_text()} | {self.tokens:,} tokens | {self.llm_calls} calls | "
                f"in flight {self.in_flight} | ETA {eta_text}")


class Progress:
    """Show a Tally: `update()` after each change, `close()` at the end."""

    def __init__(self, tally: Tally, enabled: bool = True, stream: TextIO | None = None,
                 interval_s: float = 5.0) -> None:
        self.tally = tally
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self._last_line = 0.0
        self._live = None
        if enabled and self.stream.isatty():
            self._start_rich()

    def _start_rich(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress
        from rich.progress import TextColumn, TimeRemainingColumn

        self._live = RichProgress(
            TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
            console=Console(file=self.stream), transient=False)
        self._task = self._live.add_task("batch", total=self.tally.total,
                                         completed=self.tally.skipped, stats="")
        self._live.start()

    def update(self, force: bool = False) -> None:
        if not self.enabled:
            return
        t = self.tally
        if self._live is not None:
            self._live.update(self._task, completed=t.done + t.skipped,
                              stats=f"{t.cost_text()} {t.tokens:,} tok "
                                    f"{t.in_flight} in flight")
            return
        now = time.monotonic()
        if force or now - self._last_line >= self.interval_s:
            self._last_line = now
            print(f"[rlm-ray batch] {t.line()}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        elif self.enabled:
            self.update(force=True)


def summary_rows(summary) -> list[tuple[str, str]]:
    """The final summary as label/value pairs (rendered by rich or as text)."""
    rows = [("questions", str(summary.total)),
            ("answered this run", str(summary.ran)),
            ("skipped (already finished)", str(summary.skipped))]
    rows += [(f"status {name}", str(n)) for name, n in sorted(summary.statuses.items())]
    rows += [("model calls", str(summary.llm_calls)),
             ("tokens", f"{summary.tokens:,}"),
             ("cost (this run)", _run_cost(summary)),
             *cost_rows(getattr(summary, "cost", None) or {}),
             ("wall", f"{summary.wall_s:.1f}s")]
    acc = summary.accuracy
    if acc is not None and acc.scored:
        rows += [("scored", str(acc.scored)),
                 ("exact match", f"{acc.exact}/{acc.scored} ({acc.exact_rate:.1%})"),
                 ("normalised match", f"{acc.normalized}/{acc.scored} "
                                      f"({acc.normalized_rate:.1%})")]
    if getattr(summary, "host_loss_retries", 0):
        rows.append(("retried after a host died (no attempt counted)",
                     f"{summary.host_loss_retries} ({summary.isolated} run alone)"))
    rows.append(("results", summary.out_uri))
    return rows


def _run_cost(summary) -> str:
    cost = getattr(summary, "cost", None) or {}
    return usd_total(summary.cost_usd, cost.get("priced_answers", 1),
                     cost.get("unpriced_answers", 0))


def cost_rows(cost: dict) -> list[tuple[str, str]]:
    if not cost:
        return []
    estimated = cost.get("estimated_cost_usd")
    # A saving needs a price: with none known, n/a rather than $0.
    saved = usd_total(cost["cache_saved_usd"], cost.get("priced_answers", 1),
                      cost.get("unpriced_answers", 0))
    return [("cached input share", f"{cost['cached_share']:.1%}"),
            ("saved by prompt caching", saved),
            ("dry-run estimate", "unknown" if not isinstance(estimated, (int, float))
             else f"${estimated:.4f}")]


def print_summary(summary, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from rlm_ray.textsafe import terminal_safe

    table = Table(title="rlm-ray batch summary", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for label, value in summary_rows(summary):   # the results URI is the user's text
        table.add_row(escape(terminal_safe(label)), escape(terminal_safe(value)))
    Console(file=stream, width=100).print(table)
