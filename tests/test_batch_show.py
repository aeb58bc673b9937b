"""`rlm-ray show`: terminal summary, one question's tree, and the static HTML
page (structure, escaping of model-written content, headless Chromium)."""
from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from rlm_ray.batch.manifest import write_run_info
from rlm_ray.batch.tables import FinishedQuestion, TableWriter
from rlm_ray.cli import main as cli_main

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _question(qid: str, status: str, answer: str | None, expected: str | None,
              normalized: bool | None) -> FinishedQuestion:
    root, sub, child, child_sub = (f"{qid}-root", f"{qid}-sub", f"{qid}-rlm", f"{qid}-csub")
    calls = [
        {"query_id": qid, "call_id": root, "parent_call_id": None, "depth": 0, "kind": "root",
         "model": "openai/sim/rlm-policy", "prompt_tokens": 900, "completion_tokens": 120,
         "cost_usd": 0.0012, "latency_s": 0.25, "retries": 1, "cache_hit": False, "status": "ok"},
        {"query_id": qid, "call_id": sub, "parent_call_id": root, "depth": 1, "kind": "sub",
         "model": "openai/sim/rlm-policy", "prompt_tokens": 400, "completion_tokens": 30,
         "cost_usd": None, "latency_s": 0.05, "retries": 0, "cache_hit": True, "status": "ok"},
        {"query_id": qid, "call_id": child, "parent_call_id": root, "depth": 1, "kind": "rlm",
         "model": "openai/sim/rlm-policy", "prompt_tokens": 0, "completion_tokens": 0,
         "cost_usd": 0.0, "latency_s": 1.0, "retries": 0, "cache_hit": False, "status": "ok"},
        {"query_id": qid, "call_id": child_sub, "parent_call_id": child, "depth": 2,
         "kind": "root", "model": "openai/sim/rlm-policy", "prompt_tokens": 10,
         "completion_tokens": 5, "cost_usd": 0.0, "latency_s": 0.01, "retries": 0,
         "cache_hit": False, "status": "ok"},
    ]
    steps = [
        {"query_id": qid, "call_id": root, "iteration": 1, "code": f"print('{EVIL}')",
         "output": EVIL, "error": None, "elapsed_s": 0.01},
        {"query_id": qid, "call_id": root, "iteration": 2, "code": "1/0", "output": "",
         "error": "ZeroDivisionError: division by zero", "elapsed_s": 0.002},
    ]
    answer_row = {"query_id": qid, "question": f"Which module defines {EVIL}?", "answer": answer,
                  "status": status, "error": None if status == "ok" else "model gave up",
                  "iterations": 2, "max_depth_reached": 2, "llm_calls": 3,
                  "input_tokens": 1310, "output_tokens": 155, "cost_usd": 0.0012, "wall_s": 1.5,
                  "model": "openai/sim/rlm-policy", "started_at": T0, "finished_at": T0,
                  "expected": expected, "exact_match": answer == expected,
                  "normalized_match": normalized}
    return FinishedQuestion(answer_row, calls, steps)


@pytest.fixture
def results(tmp_path) -> Path:
    out = tmp_path / "results"
    writer = TableWriter(str(out))
    writer.add(_question("q1", "ok", "json/decoder.py", "json/decoder.py", True))
    writer.add(_question("q2", "error", None, "email/utils.py", False))
    writer.add(_question("q3", "ok", EVIL, None, None))
    writer.flush()
    write_run_info(str(out), {"corpus_uri": "/c", "queries": "/q.jsonl", "status": "finished"})
    return out


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_terminal_summary_and_one_question(results, capsys):
    assert cli_main(["show", str(results)]) == 0
    out = capsys.readouterr().out
    assert "questions answered" in out and "1/2 (50.0%)" in out and "status error" in out
    assert cli_main(["show", str(results), "--query-id", "q1"]) == 0
    tree = capsys.readouterr().out
    assert "root depth 0" in tree and "sub depth 1" in tree and "rlm depth 1" in tree
    assert "cache-hit" in tree and "ZeroDivisionError" in tree
    assert cli_main(["show", str(results), "--query-id", "nope"]) == 2
    assert cli_main(["show", str(results.parent / "missing")]) == 2


def test_html_structure_and_escaping(results, tmp_path):
    page = tmp_path / "page.html"
    assert cli_main(["show", str(results), "--html", str(page)]) == 0
    html = page.read_text()
    parser = _Collect()
    parser.feed(html)
    tags = [t for t, _ in parser.tags]
    # Model-written markup never becomes markup: no script, no img, no handlers.
    assert "script" not in tags and "img" not in tags
    assert not any(k.startswith("on") for _, attrs in parser.tags for k in attrs)
    assert EVIL in "".join(parser.text)              # shown as text instead
    # Self-contained: no external reference of any kind.
    assert not any(k in ("src", "href") for _, attrs in parser.tags for k in attrs)
    sections = [a for t, a in parser.tags if t == "section"]
    assert [a["id"] for a in sections] == ["q-q1", "q-q2", "q-q3"]
    kinds = [a["data-kind"] for t, a in parser.tags if t == "li" and "data-kind" in a]
    assert kinds.count("root") == 6 and kinds.count("sub") == 3 and kinds.count("rlm") == 3
    assert tags.count("details") == 12               # one collapsible node per call
    assert "cache hit" in html and "1 retries" in html and "division by zero" in html


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed "
                    "(apt-get install chromium); the html.parser test still checks the page")
@pytest.mark.timeout(120)
def test_html_renders_in_headless_chromium(results, tmp_path):
    page = tmp_path / "page.html"
    assert cli_main(["show", str(results), "--html", str(page)]) == 0
    flags = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=90)
    assert dom.returncode == 0, dom.stderr[-1000:]
    assert dom.stdout.count('class="call-tree') >= 6 and 'id="q-q2"' in dom.stdout
    assert "<script>alert" not in dom.stdout        # still text after the browser parsed it
    shot = tmp_path / "page.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()],
                   capture_output=True, timeout=90, check=True)
    assert shot.stat().st_size > 10_000            # a real rendering, not a blank page


# Escape sequences a model or a document can put in an answer, a step or an error:
# clipboard write (OSC 52), window title (OSC 0), cursor/erase (CSI), 8-bit CSI,
# a bare CR that overwrites the line, and Rich markup that would become an OSC 8 link.
ANSI_ATTACKS = ["\x1b]52;c;cm0gLXJmIH4=\x07", "\x1b]0;pwned\x07", "\x1b[2J\x1b[H", "\x9b31m",
                "ok\rOVERWRITTEN"]
MARKUP_LINK = "[link=https://evil.example]click[/link]"
EVIL_TERMINAL = "".join(ANSI_ATTACKS) + MARKUP_LINK


def test_terminal_output_neutralises_escape_sequences(tmp_path, capsys, monkeypatch):
    """`rlm-ray show` printed answers and steps raw: OSC 52 reached the terminal."""
    monkeypatch.setenv("FORCE_COLOR", "1")      # Rich renders as for a real terminal
    out_dir = tmp_path / "results"
    writer = TableWriter(str(out_dir))
    question = _question("q9", "error", EVIL_TERMINAL, EVIL_TERMINAL, False)
    question.steps[1]["error"] = EVIL_TERMINAL
    question.steps[0]["code"] = f"print({EVIL_TERMINAL!r})\n# {EVIL_TERMINAL}"
    question.answer["error"] = EVIL_TERMINAL
    writer.add(question)
    writer.flush()
    write_run_info(str(out_dir), {"corpus_uri": "/c", "queries": "/q.jsonl", "status": "finished"})
    for argv in (["show", str(out_dir)], ["show", str(out_dir), "--query-id", "q9"]):
        assert cli_main(argv) == 0
        out = capsys.readouterr().out
        for raw in ("\x1b]52;", "\x1b]0;", "\x1b[2J", "\x9b", "\x1b]8;", "\rOVERWRITTEN"):
            assert raw not in out, (argv, raw)
        assert "\\x1b]52;" in out                 # shown, not obeyed
    # The table keeps the exact text.
    import pyarrow.parquet as pq

    answers = pq.read_table(next((out_dir / "answers").rglob("*.parquet"))).to_pylist()
    assert answers[0]["answer"] == EVIL_TERMINAL


def test_billing_detail_and_unknown_prices(tmp_path, capsys):
    """Cache reads/writes, tier and savings reach `show` and the page; an
    unknown price is never shown as $0."""
    q1 = _question("q1", "ok", "a", None, None)
    q1.answer.update(cached_tokens=800, cache_write_tokens=64, cache_saved_usd=0.0009)
    q1.calls[0].update(cached_tokens=768, cache_write_tokens=64, service_tier="flex",
                       reasoning_tokens=12)
    q2 = _question("q2", "ok", "b", None, None)
    q2.answer["cost_usd"] = None
    out = tmp_path / "results"
    writer = TableWriter(str(out))
    writer.add(q1)
    writer.add(q2)
    writer.flush()
    write_run_info(str(out), {"corpus_uri": "/c", "queries": "/q.jsonl", "status": "finished"})

    assert cli_main(["show", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "$0.0012 + 1 unpriced" in summary and "n/a (no price known)" in summary
    assert "800 (30.5% of input)" in summary and "$0.0009" in summary
    assert cli_main(["show", str(out), "--query-id", "q1"]) == 0
    tree = capsys.readouterr().out
    assert "cached 768 cache write 64 reasoning 12 tier flex" in tree
    page = tmp_path / "page.html"
    assert cli_main(["show", str(out), "--html", str(page)]) == 0
    html = page.read_text()
    assert "tier flex" in html and "cached 800" in html and "saved by prompt caching" in html
