"""Engine pieces that need no model: block parsing, prompt size, records,
limits, and the REPL's ContextView over a real ingested corpus."""
from __future__ import annotations

import pytest

from rlm_ray.engine import parsing, prompts
from rlm_ray.engine.limits import Limits, TreeBudget
from rlm_ray.engine.records import REDACTED, Recorder, redact, secret_values, usage_of
from rlm_ray.engine.context_view import ContextView
from rlm_ray.errors import UserError


def test_repl_blocks_in_order_and_other_fences_ignored():
    reply = ("Plan.\n```repl\nx = 1\nprint(x)\n```\nthen\n```python\nnot_run()\n```\n"
             "```repl\nFINAL(x)\n```\n```repl\n\n```")
    assert parsing.repl_blocks(reply) == ["x = 1\nprint(x)", "FINAL(x)"]


def test_text_final_only_when_the_reply_is_a_final():
    assert parsing.text_final('FINAL("42")') == ("value", "42")
    assert parsing.text_final("  FINAL(a, b)\n") == ("value", "a, b")
    assert parsing.text_final("FINAL_VAR('result')") == ("var", "result")
    assert parsing.text_final("I will call FINAL(x) once I know x.") is None


def test_metadata_is_constant_size_whatever_the_corpus():
    small = prompts.corpus_metadata({"tokens": 10_000, "documents": 12, "chunks": 14},
                                    [f"pkg/m{i}.py" for i in range(12)])
    huge = prompts.corpus_metadata({"tokens": 100_000_000, "documents": 40_000, "chunks": 90_000},
                                   [f"pkg/m{i}.py" for i in range(40_000)])
    assert abs(len(huge) - len(small)) < 40
    assert huge.count("\n  ") == prompts.MAX_EXAMPLE_PATHS
    first = prompts.first_user_message("What is\nthe code?", huge)
    assert first.splitlines()[:4] == ["<question>", "What is", "the code?", "</question>"]
    assert first.splitlines()[4] == "Context:" and first.endswith(huge)


def test_feedback_format_is_the_documented_contract():
    text = prompts.repl_feedback(3, "out", "Traceback ...\nNameError: x")
    assert text.startswith("REPL output (iteration 3):\nout\nError:\nTraceback")
    assert prompts.forced_final("max_iterations").startswith("Final answer required:")


def test_redaction_and_secret_discovery(monkeypatch):
    monkeypatch.setenv("SOMEPROVIDER_API_KEY", "sk-abcdef123456")
    secrets = secret_values(("configured-key-999",))
    assert "sk-abcdef123456" in secrets and "configured-key-999" in secrets
    assert redact("key=sk-abcdef123456!", secrets) == f"key={REDACTED}!"
    rec = Recorder("q", secrets)
    rec.add_step("c1", 1, "print('configured-key-999')", "configured-key-999", None, 0.1)
    assert "configured-key-999" not in str(rec.step_dicts())


def test_usage_does_not_count_rlm_rows_twice():
    calls = [
        {"kind": "root", "prompt_tokens": 10, "completion_tokens": 2, "cost_usd": 0.1, "cache_hit": False},
        {"kind": "rlm", "prompt_tokens": 5, "completion_tokens": 1, "cost_usd": 0.05, "cache_hit": False},
        {"kind": "root", "prompt_tokens": 5, "completion_tokens": 1, "cost_usd": 0.05, "cache_hit": True},
    ]
    usage = usage_of(calls)
    assert (usage["llm_calls"], usage["rlm_calls"], usage["input_tokens"]) == (2, 1, 15)
    assert usage["cost_usd"] == pytest.approx(0.15)


def test_limits_reject_nonsense_and_depth_rule():
    with pytest.raises(UserError):
        Limits(max_iterations=0)
    with pytest.raises(UserError):
        Limits(timeout_s=0)
    tree = TreeBudget.open(Limits(max_depth=2, max_sub_calls=5))
    assert tree.can_spawn_child(0) and not tree.can_spawn_child(1)
    assert not TreeBudget.open(Limits(max_depth=1)).can_spawn_child(0)
    assert tree.take_sub_calls(3) == 3
    assert tree.take_sub_calls(4) == 2   # only what is left is granted
    assert tree.take_sub_calls(1) == 0


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    from rlm_ray.corpus import Corpus, ingest

    src = tmp_path_factory.mktemp("src")
    for i in range(30):
        (src / f"mod{i}.py").write_text(
            "".join(f"def f{i}_{j}(x):\n    return x + {j}\n" for j in range(60)))
    out = tmp_path_factory.mktemp("corpus") / "c"
    ingest([str(src)], str(out), chunk_tokens=200)
    return Corpus.open(str(out))


def test_context_view_caps_rows_and_says_so(small_corpus):
    view = ContextView(small_corpus, max_rows=7)
    rows = view.sql("select path, chunk_id from chunks order by path, chunk_id;")
    assert len(rows) == 7 and set(rows[0]) == {"path", "chunk_id"}
    assert "first 7 rows" in view.drain_notes()[0]
    assert view.sql("select count(*) as n from chunks")[0]["n"] > 7
    assert view.drain_notes() == []
    assert len(view.docs(limit=3)) == 3 and view.drain_notes() == []
    assert len(view.docs()) == 7 and view.drain_notes()
    hits = view.grep(r"def f3_1\d\(", limit=5)
    assert len(hits) == 5 and hits[0]["path"] == "mod3.py"
    assert view.read("mod3.py", 0, 2).startswith("def f3_0(x):")
    assert view.stats["documents"] == 30 and len(view) == small_corpus.stats["tokens"]
    assert "source" in small_corpus.stats and "source" not in view.stats  # no host paths in the REPL


def test_resident_chunks_answer_like_the_shards_and_stay_confined(small_corpus, tmp_path):
    """A corpus small enough is held in memory by the query workers: the same
    rows as a scan of the shards, and still no file but the corpus's."""
    from dataclasses import replace

    from rlm_ray.corpus.duck import DuckLimits, connect
    from rlm_ray.corpus.handle import Corpus

    shards = [small_corpus._file(s["file"]) for s in small_corpus.manifest["shards"]]
    docs = small_corpus._file(small_corpus.manifest["docs_file"])
    size = small_corpus.manifest["bytes"]
    limits = replace(DuckLimits(), resident_mb=1)
    assert size < 1 << 20
    resident = connect(small_corpus.uri, shards, docs, limits, corpus_bytes=size)
    on_disk = connect(small_corpus.uri, shards, docs, limits, corpus_bytes=(1 << 20) + 1)
    kind = "SELECT table_type FROM information_schema.tables WHERE table_name = 'chunks'"
    assert resident.execute(kind).fetchone()[0] == "BASE TABLE"
    assert on_disk.execute(kind).fetchone()[0] == "VIEW"
    scan = ("SELECT path, chunk_id FROM chunks WHERE regexp_matches(text, '(?m)^def f1_5\\b') "
            "ORDER BY path, chunk_id")
    assert resident.execute(scan).fetchall() == on_disk.execute(scan).fetchall() != []
    outside = tmp_path / "secret.csv"
    outside.write_text("a\n1\n")
    with pytest.raises(Exception, match="(?i)permission|access|disabled"):
        resident.execute(f"SELECT * FROM read_csv('{outside}')").fetchall()
    # The handle's own connection decides from the manifest and the limits it carries.
    handle = Corpus(small_corpus.uri, small_corpus.manifest, limits)
    assert handle._cursor().execute(kind).fetchone()[0] == "BASE TABLE"


def test_a_corpus_fact_is_computed_once_per_handle(small_corpus):
    calls = []
    view_a, view_b = ContextView(small_corpus), ContextView(small_corpus)
    assert small_corpus.fact("probe", lambda: calls.append(1) or 42) == 42
    assert small_corpus.fact("probe", lambda: calls.append(1) or 43) == 42
    assert len(calls) == 1
    assert view_a.characters() == view_b.characters() == sum(
        len(small_corpus.read(d["path"])) for d in small_corpus.docs())


def test_the_repl_starts_in_the_background_and_a_failed_start_reaches_the_first_block():
    """Workspace() returns before its sandbox is up (the root model's first call
    overlaps the start); a start that fails is raised by the first use, and
    closing is safe either way."""
    from sandbox import SandboxError

    from rlm_ray.engine.workspace import Workspace

    broken = Workspace(context="text", view=None, host_functions={},
                       sandbox_opts={"memory_mb": 0})
    with pytest.raises(SandboxError, match="memory_mb"):
        broken.run("print(1)", timeout_s=30)
    broken.close()
    broken.close()

    working = Workspace(context="some text", view=None, host_functions={},
                        sandbox_opts={"timeout_s": 30})
    try:
        block = working.run("print(len(context))", timeout_s=30)
        assert block.error is None and block.output.strip() == "9"
    finally:
        working.close()
