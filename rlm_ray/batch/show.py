"""`rlm-ray show RESULTS`: a terminal summary of a result folder, one
question's call tree and steps with `--query-id`, a static page with `--html`."""
from __future__ import annotations

import sys
from collections import Counter, defaultdict
from typing import TextIO

from rlm_ray import storage
from rlm_ray.batch.billing_text import billing_note, dollars, usd_total
from rlm_ray.batch.manifest import read_run_info
from rlm_ray.batch.scoring import accuracy_of
from rlm_ray.batch.tables import OUTPUT_COLUMN, RunTables, read_run
from rlm_ray.batch.typed import output_text
from rlm_ray.errors import UserError
from rlm_ray.textsafe import terminal_safe

ANSWER_PREVIEW = 60


def table_summary(tables: RunTables, info: dict | None) -> list[tuple[str, str]]:
    """Figures recounted from the tables themselves (never from a log)."""
    answers = tables.answers
    rows: list[tuple[str, str]] = []
    if info:
        rows += [("corpus", str(info.get("corpus_uri") or "none (per-row text contexts)")),
                 ("queries", str(info.get("queries"))), ("run status", str(info.get("status")))]
        if info.get("output_schema_sha256"):
            rows.append(("output schema", f"sha256 {info['output_schema_sha256'][:12]}, typed "
                                          f"`output` {info.get('output_arrow_type', '')}".strip()))
    rows.append(("questions answered", str(answers.num_rows)))
    for status, n in sorted(Counter(answers.column("status").to_pylist()).items()):
        rows.append((f"status {status}", str(n)))
    def total(column: str) -> float:
        return sum(v or 0 for v in answers.column(column).to_pylist())
    input_tokens = total("input_tokens")
    rows += [("model calls", f"{int(total('llm_calls'))}"),
             ("tokens", f"{int(input_tokens + total('output_tokens')):,}"),
             ("cost", dollars(answers.column("cost_usd").to_pylist()))]
    cached = total("cached_tokens")
    if cached or total("cache_write_tokens"):
        share = f" ({cached / input_tokens:.1%} of input)" if input_tokens else ""
        rows += [("cached input tokens", f"{int(cached):,}{share}"),
                 ("cache writes", f"{int(total('cache_write_tokens')):,} tokens"),
                 ("saved by prompt caching", _saved(answers.column("cache_saved_usd").to_pylist()))]
    acc = accuracy_of(answers)
    if acc.scored:
        rows += [("exact match", f"{acc.exact}/{acc.scored} ({acc.exact_rate:.1%})"),
                 ("normalised match", f"{acc.normalized}/{acc.scored} ({acc.normalized_rate:.1%})")]
    return rows


def _saved(values: list) -> str:
    """Rows without caching carry no saving (None) whatever their price: n/a
    only when no row has a figure (no price known), never $0 for that."""
    known = [v for v in values if v is not None]
    return usd_total(sum(known), len(known), 0 if known else len(values))


def _safe(text) -> str:
    """Model/document text for the terminal: escape sequences shown, not obeyed,
    and no Rich markup (`[link=...]` would become an OSC 8 hyperlink)."""
    from rich.markup import escape

    return escape(terminal_safe("" if text is None else text))


def _clip(text, n: int = ANSWER_PREVIEW) -> str:
    text = "" if text is None else str(text).replace("\n", " ")
    return text if len(text) <= n else text[: n - 1] + "…"


def _print_overview(console, tables: RunTables, summary: list[tuple[str, str]]) -> None:
    from rich.table import Table

    head = Table(show_header=False, title="rlm-ray results")
    for label, value in summary:
        head.add_row(_safe(label), _safe(value))
    console.print(head)
    typed = OUTPUT_COLUMN in tables.answers.column_names
    listing = Table("query_id", "status", "output" if typed else "answer", "expected", "match",
                    "calls", "cost")
    for a in tables.answers.to_pylist():
        match = "" if a["normalized_match"] is None else ("yes" if a["normalized_match"] else "no")
        shown = a["answer"] or a["error"]
        if typed and a[OUTPUT_COLUMN] is not None:   # the typed value, else why there is none
            shown = output_text(a[OUTPUT_COLUMN])
        elif typed:
            shown = a["error"] or a["answer"]
        listing.add_row(_safe(a["query_id"]), _safe(a["status"]), _safe(_clip(shown, 80)),
                        _safe(_clip(a["expected"])), match, str(a["llm_calls"] or 0),
                        dollars([a["cost_usd"]]))
    console.print(listing)


def _print_question(console, tables: RunTables, query_id: str) -> None:
    from rich.tree import Tree

    answers = [a for a in tables.answers.to_pylist() if a["query_id"] == query_id]
    if not answers:
        raise UserError(f"no answer for query_id {query_id!r} in these results")
    a = answers[0]
    console.print(f"[bold]{_safe(a['question'])}[/bold]  (#{_safe(query_id)}, {_safe(a['status'])})")
    console.print(f"answer:   {_safe(str(a['answer']))}")
    if a.get(OUTPUT_COLUMN) is not None:
        console.print(f"output:   {_safe(output_text(a[OUTPUT_COLUMN], indent=2))}")
    if a["expected"] is not None:
        console.print(f"expected: {_safe(str(a['expected']))}  (normalised match: "
                      f"{a['normalized_match']})")
    if a["error"]:
        console.print(f"error:    {_safe(a['error'])}")
    calls = [c for c in tables.calls.to_pylist() if c["query_id"] == query_id]
    steps: dict[str, list[dict]] = defaultdict(list)
    for s in tables.steps.to_pylist():
        if s["query_id"] == query_id:
            steps[s["call_id"]].append(s)
    ids = {c["call_id"] for c in calls}
    kids: dict[str | None, list[dict]] = defaultdict(list)
    for c in calls:
        kids[c["parent_call_id"] if c["parent_call_id"] in ids else None].append(c)
    tree = Tree("calls")

    def grow(node, parent) -> None:
        for c in kids.get(parent, []):
            cost = dollars([c["cost_usd"]], places=5)
            label = (f"[bold]{_safe(c['kind'])}[/bold] depth {c['depth']} {_safe(str(c['model']))} "
                     f"{c['prompt_tokens']}+{c['completion_tokens']} tok {cost} "
                     f"{(c['latency_s'] or 0):.3f}s retries={c['retries']}"
                     f"{' cache-hit' if c['cache_hit'] else ''} {_safe(billing_note(c))}".rstrip())
            branch = node.add(label)
            for s in sorted(steps.get(c["call_id"], []), key=lambda s: s["iteration"]):
                step = branch.add(f"iteration {s['iteration']}")
                step.add(_safe(_clip(s["code"], 200)))
                if s["error"]:
                    step.add(f"[red]{_safe(_clip(s['error'], 200))}[/red]")
            grow(branch, c["call_id"])

    grow(tree, None)
    console.print(tree)


def show(out_uri: str, query_id: str | None = None, html_path: str | None = None,
         stream: TextIO | None = None) -> int:
    from rich.console import Console

    info = read_run_info(out_uri)
    tables = read_run(out_uri)
    if info is None and tables.answers.num_rows == 0:
        raise UserError(f"no batch results at {out_uri} (expected run.json and answers/)")
    console = Console(file=stream or sys.stdout, width=140)
    summary = table_summary(tables, info)
    if query_id is not None:
        _print_question(console, tables, query_id)
    else:
        _print_overview(console, tables, summary)
    if html_path:
        from rlm_ray.batch.viewer import render_html

        page = render_html(tables, summary, title=out_uri, query_id=query_id)
        storage.write_bytes_atomic(html_path, page.encode("utf-8"))
        console.print(f"wrote {_safe(html_path)}")
    return 0
