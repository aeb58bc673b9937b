"""A self-contained static HTML page of a batch run: per question its status,
answer vs expected, the collapsible call tree (root / sub / rlm calls with
depth, tokens, cost, latency, retries, cache hits) and each call's code steps.

No external assets and no script: `<details>` gives the collapsing, so the
page opens anywhere (a laptop, an artifact store, an air-gapped box). Every
piece of model-written content is escaped on the way in.
"""
from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Iterable

from rlm_ray.batch.billing_text import billing_note, dollars
from rlm_ray.batch.tables import RunTables
from rlm_ray.batch.typed import output_text

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2330;background:#f6f7f9}
h1{font-size:20px;margin:0 0 4px} .sub{color:#5b6475;margin-bottom:16px}
table.summary{border-collapse:collapse;margin:12px 0 20px;background:#fff}
table.summary td,table.summary th{border:1px solid #dde1e8;padding:4px 10px;text-align:left}
section.question{background:#fff;border:1px solid #dde1e8;border-radius:8px;margin:12px 0;padding:12px 16px}
section.question>h2{font-size:15px;margin:0 0 6px} .qid{color:#5b6475;font-weight:normal}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;color:#fff;margin-right:6px}
.s-ok{background:#2f9e44}.s-error{background:#e03131}.s-timeout,.s-budget_exceeded,.s-max_iterations,.s-invalid_output{background:#f08c00}
.match-yes{color:#2f9e44}.match-no{color:#e03131}
dl.answer{display:grid;grid-template-columns:110px 1fr;gap:2px 10px;margin:6px 0}
dl.answer dt{color:#5b6475} dl.answer dd{margin:0;font-family:ui-monospace,monospace;white-space:pre-wrap;word-break:break-word}
ul.call-tree{list-style:none;padding-left:18px;margin:4px 0;border-left:2px solid #e5e8ee}
ul.call-tree.top{padding-left:0;border-left:none}
summary.call{cursor:pointer;padding:2px 0} .kind{font-weight:600;text-transform:uppercase;font-size:11px;padding:0 6px;border-radius:4px;margin-right:6px}
.k-root{background:#d0ebff}.k-sub{background:#e6fcf5}.k-rlm{background:#fff3bf}.k-compact{background:#f3f0ff}
.metrics{color:#5b6475;font-size:12px} .cache{color:#1971c2}
div.step{margin:6px 0 6px 4px;border:1px solid #e5e8ee;border-radius:6px;overflow:hidden}
div.step>.label{background:#f1f3f5;font-size:12px;padding:2px 8px;color:#5b6475}
pre{margin:0;padding:6px 8px;white-space:pre-wrap;word-break:break-word;font:12px/1.4 ui-monospace,monospace}
pre.code,pre.output{max-height:360px;overflow:auto} pre.code{background:#fbfbfc} pre.output{background:#f8fff8;border-top:1px solid #e5e8ee}
pre.error{background:#fff5f5;color:#c92a2a;border-top:1px solid #e5e8ee}
.error-line{color:#c92a2a;white-space:pre-wrap}
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt_cost(value) -> str:
    return dollars([value], places=5)


def _call_summary(call: dict) -> str:
    kind = call.get("kind") or "?"
    parts = [f"depth {call.get('depth')}", _e(call.get("model")),
             f"{call.get('prompt_tokens') or 0}+{call.get('completion_tokens') or 0} tok",
             _fmt_cost(call.get("cost_usd")), f"{(call.get('latency_s') or 0):.3f}s"]
    if call.get("retries"):
        parts.append(f"{call['retries']} retries")
    if billing_note(call):
        parts.append(_e(billing_note(call)))
    cache = ' <span class="cache">cache hit</span>' if call.get("cache_hit") else ""
    status = "" if call.get("status") in (None, "ok") else f" [{_e(call.get('status'))}]"
    return (f'<span class="kind k-{_e(kind)}">{_e(kind)}</span>'
            f'<span class="metrics">{" · ".join(parts)}</span>{cache}{_e(status)}')


def _steps_html(steps: Iterable[dict]) -> str:
    out = []
    for step in sorted(steps, key=lambda s: s.get("iteration") or 0):
        out.append(f'<div class="step"><div class="label">iteration {_e(step.get("iteration"))}'
                   f' · {(step.get("elapsed_s") or 0):.3f}s</div>'
                   f'<pre class="code">{_e(step.get("code"))}</pre>')
        if step.get("output"):
            out.append(f'<pre class="output">{_e(step.get("output"))}</pre>')
        if step.get("error"):
            out.append(f'<pre class="error">{_e(step.get("error"))}</pre>')
        out.append("</div>")
    return "".join(out)


def _tree_html(calls: list[dict], steps_by_call: dict[str, list[dict]]) -> str:
    children: dict[str | None, list[dict]] = defaultdict(list)
    ids = {c["call_id"] for c in calls}
    for call in calls:
        parent = call.get("parent_call_id")
        children[parent if parent in ids else None].append(call)

    def render(parent: str | None, top: bool = False) -> str:
        kids = children.get(parent, [])
        if not kids:
            return ""
        items = []
        for call in kids:
            inner = _steps_html(steps_by_call.get(call["call_id"], [])) + render(call["call_id"])
            open_attr = " open" if call.get("kind") == "root" and (call.get("depth") or 0) == 0 else ""
            items.append(f'<li class="call" data-kind="{_e(call.get("kind"))}">'
                         f'<details{open_attr}><summary class="call">{_call_summary(call)}'
                         f'</summary>{inner}</details></li>')
        return f'<ul class="call-tree{" top" if top else ""}">{"".join(items)}</ul>'

    return render(None, top=True)


def _match_html(value) -> str:
    if value is None:
        return "—"
    return '<span class="match-yes">yes</span>' if value else '<span class="match-no">no</span>'


def _question_html(answer: dict, calls: list[dict], steps: list[dict]) -> str:
    steps_by_call: dict[str, list[dict]] = defaultdict(list)
    for step in steps:
        steps_by_call[step["call_id"]].append(step)
    status = answer.get("status") or "error"
    rows = [("answer", f"<dd>{_e(answer.get('answer'))}</dd>")]
    if answer.get("output") is not None:   # typed answers: the value that fit the schema
        rows.append(("output", f"<dd>{_e(output_text(answer['output'], indent=2))}</dd>"))
    if answer.get("expected") is not None:
        rows += [("expected", f"<dd>{_e(answer.get('expected'))}</dd>"),
                 ("match", f"<dd>exact {_match_html(answer.get('exact_match'))} · normalised "
                           f"{_match_html(answer.get('normalized_match'))}</dd>")]
    rows.append(("usage", f"<dd>{answer.get('llm_calls') or 0} calls · "
                          f"{answer.get('input_tokens') or 0}+{answer.get('output_tokens') or 0}"
                          f" tok · {_fmt_cost(answer.get('cost_usd'))} · "
                          f"{(answer.get('wall_s') or 0):.2f}s · {answer.get('iterations') or 0}"
                          f" iterations · depth {answer.get('max_depth_reached') or 0}"
                          f"{' · ' + _e(billing_note(answer)) if billing_note(answer) else ''}</dd>"))
    dl = "".join(f"<dt>{label}</dt>{value}" for label, value in rows)
    error = f'<div class="error-line">{_e(answer.get("error"))}</div>' if answer.get("error") else ""
    tree = _tree_html(calls, steps_by_call) if calls else "<p>no model calls recorded</p>"
    return (f'<section class="question" id="q-{_e(answer["query_id"])}">'
            f'<h2><span class="badge s-{_e(status)}">{_e(status)}</span>{_e(answer.get("question"))}'
            f' <span class="qid">#{_e(answer["query_id"])}</span></h2>'
            f'<dl class="answer">{dl}</dl>{error}{tree}</section>')


def render_html(tables: RunTables, summary_rows: list[tuple[str, str]], title: str,
                query_id: str | None = None) -> str:
    answers = tables.answers.to_pylist()
    if query_id is not None:
        answers = [a for a in answers if a["query_id"] == query_id]
    calls_by_q: dict[str, list[dict]] = defaultdict(list)
    steps_by_q: dict[str, list[dict]] = defaultdict(list)
    for call in tables.calls.to_pylist():
        calls_by_q[call["query_id"]].append(call)
    for step in tables.steps.to_pylist():
        steps_by_q[step["query_id"]].append(step)
    summary = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in summary_rows)
    sections = "".join(_question_html(a, calls_by_q[a["query_id"]], steps_by_q[a["query_id"]])
                       for a in answers)
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>rlm-ray batch results</h1><div class=\"sub\">{_e(title)}</div>"
            f'<table class="summary">{summary}</table>{sections}</body></html>')
