"""`rlm-ray bench paper` without a model: loaders over small files in each
benchmark's published schema, the official scoring rules against values
computed by hand, the paper's reference rows and the dry-run estimate."""
from __future__ import annotations

import json

import pytest

from fixtures import paper as fx
from rlm_ray.bench.paper import reference, scoring
from rlm_ray.bench.paper.registry import LoadOptions, datasets
from rlm_ray.bench.paper.run import percentile
from rlm_ray.bench.paper.tasks import data_files
from rlm_ray.cli import main
from rlm_ray.errors import UserError


def load(name: str, paths, **opts):
    files = data_files([str(p) for p in paths]) if paths else []
    return datasets()[name].load(files, LoadOptions(**opts))


# -- loaders -------------------------------------------------------------------
def test_oolong_keeps_trec_coarse_at_the_asked_length(tmp_path):
    shard = fx.write_oolong(tmp_path)
    tasks = load("oolong", [shard.parent], context_len=1024)
    assert [t.query_id for t in tasks] == ["oolong-7", "oolong-8", "oolong-9", "oolong-10"]
    first = tasks[0]
    assert first.kind == "text" and first.context_text == fx.WINDOW_A
    assert first.expected == "[2]" and first.meta["answer_type"] == "ANSWER_TYPE.NUMERIC"
    assert "how many data points" in first.question
    # The 2048-token window is another length; the spam row another dataset.
    assert [t.query_id for t in load("oolong", [shard], context_len=2048)] == ["oolong-11"]


def test_oolong_sampling_is_seeded_and_a_missing_length_is_one_clear_error(tmp_path):
    shard = fx.write_oolong(tmp_path)
    a = [t.query_id for t in load("oolong", [shard], context_len=1024, limit=2, seed=5)]
    b = [t.query_id for t in load("oolong", [shard], context_len=1024, limit=2, seed=5)]
    assert a == b and len(a) == 2 and set(a) <= {"oolong-7", "oolong-8", "oolong-9", "oolong-10"}
    with pytest.raises(UserError, match="no trec_coarse rows with context_len 131072.*1024, 2048"):
        load("oolong", [shard])      # the paper's default, 131K, is not in this file


def test_oolong_pairs_take_the_first_trec_coarse_window_of_their_length(tmp_path):
    pairs = fx.write_pairs(tmp_path)
    shard = fx.write_oolong(tmp_path)
    tasks = load("oolong-pairs", [pairs, shard], context_len=1024)
    assert [t.query_id for t in tasks] == ["pairs-1024-1", "pairs-1024-2"]
    # Window B has the lower context_window_id (1 < 3) at this length.
    assert all(t.context_text == fx.WINDOW_B for t in tasks)
    assert tasks[0].meta["gold_pairs"] == ["(101, 103)"]
    assert json.loads(tasks[0].expected) == ["(101, 103)"]
    with pytest.raises(UserError, match="oolong-pairs-32768.json"):
        load("oolong-pairs", [pairs, shard])            # the paper's 32K file is absent
    with pytest.raises(UserError, match="oolong-synth"):
        load("oolong-pairs", [pairs], context_len=1024)   # the window is not in the pairs file


def test_browsecomp_builds_each_querys_documents_like_the_paper(tmp_path):
    queries, corpus = fx.write_browsecomp(tmp_path)
    tasks = load("browsecomp-plus", [queries, corpus.parent], docs_per_query=6, seed=1)
    assert [t.query_id for t in tasks] == ["bcp-784", "bcp-785"]
    first = tasks[0]
    assert first.kind == "corpus" and first.expected == "Port Aldwin"
    paths = {p for p, _ in first.documents}
    assert len(paths) == 6
    assert {"doc-d1.txt", "doc-d2.txt", "doc-d7.txt"} <= paths   # evidence, gold, negatives
    assert sum(p.startswith("doc-c") for p in paths) == 3         # the rest from the corpus
    again = load("browsecomp-plus", [queries, corpus], docs_per_query=6, seed=1)
    assert again[0].documents == first.documents
    # Without a corpus, a query keeps its own documents only.
    alone = load("browsecomp-plus", [queries], docs_per_query=6)
    assert {p for p, _ in alone[1].documents} == {"doc-d3.txt", "doc-d4.txt"}


def test_browsecomp_refuses_the_obfuscated_files(tmp_path):
    queries, corpus = fx.write_browsecomp(tmp_path, obfuscated=True)
    with pytest.raises(UserError, match="still obfuscated.*decryption"):
        load("browsecomp-plus", [queries, corpus])


def test_longbench_keeps_the_code_repository_domain(tmp_path):
    data = fx.write_longbench(tmp_path)
    tasks = load("longbench-codeqa", [data])
    assert [t.expected for t in tasks] == ["B", "A"]
    question = tasks[0].question
    assert "(B) check_config" in question and "The correct answer is" in question
    assert tasks[0].context_text.startswith("def check_config")


def test_sniah_is_generated_with_one_needle_per_task():
    tasks = load("sniah", [], limit=4, context_len=1024, seed=3)
    assert len(tasks) == 4 and len({t.expected for t in tasks}) == 4
    for task in tasks:
        assert task.context_text.count("special magic numbers") == 1
        assert f"is: {task.expected}." in task.context_text
    assert [t.context_text for t in load("sniah", [], limit=4, context_len=1024, seed=3)] == \
        [t.context_text for t in tasks]


def test_a_file_without_the_published_columns_is_one_line_error(tmp_path):
    bad = tmp_path / "data.json"
    bad.write_text(json.dumps([{"_id": "x", "question": "q"}]))
    with pytest.raises(UserError, match="lacks the published column"):
        load("longbench-codeqa", [bad])


# -- scoring (values computed by hand) -------------------------------------------
@pytest.mark.parametrize("answer,expected,kind,score", [
    ("Answer: 2", "[2]", "ANSWER_TYPE.NUMERIC", 1.0),
    ("Answer: 4", "[2]", "ANSWER_TYPE.NUMERIC", 0.5625),           # 0.75 ** 2
    ("There are 5 such data points. Answer: 9", "[6]", "ANSWER_TYPE.NUMERIC", 0.421875),  # 0.75**3
    ("Answer: lots", "[2]", "ANSWER_TYPE.NUMERIC", 0.0),
    ("Label: location", "['location']", "ANSWER_TYPE.LABEL", 1.0),
    ("Label: entity", "['location']", "ANSWER_TYPE.LABEL", 0.0),
    ("Date: Jan 04, 2023", "[datetime.date(2023, 1, 4)]", "ANSWER_TYPE.DATE", 1.0),
    ("Date: 2023-01-05", "[datetime.date(2023, 1, 4)]", "ANSWER_TYPE.DATE", 0.0),
    ("Answer: location is more common than entity in the data",
     "['more common than']", "ANSWER_TYPE.COMPARISON", 1.0),
])
def test_oolong_score(answer, expected, kind, score):
    assert scoring.score_oolong(answer, expected, kind).score == pytest.approx(score)


def test_oolong_pairs_f1():
    gold = ["(1, 2)", "(3, 4)", "(5, 6)"]
    # 2 of 3 predicted are right, 2 of 3 gold found: P = R = 2/3, F1 = 2/3.
    assert scoring.score_pairs("(2, 1)\n(3, 4)\n(7, 8)", gold).score == pytest.approx(2 / 3)
    # 1 predicted, right: P = 1, R = 1/3, F1 = 2 * 1/3 / (4/3) = 0.5.
    assert scoring.score_pairs("The pairs are: (5, 6)", gold).score == pytest.approx(0.5)
    assert scoring.score_pairs("(1,2) (3,4) (5,6) (1, 2)", gold).score == 1.0
    assert scoring.score_pairs("no pairs", gold).score == 0.0
    assert scoring.score_pairs("none", []).score == 1.0


@pytest.mark.parametrize("answer,letter", [
    ("The correct answer is (B)", "B"), ("**The correct answer is C**", "C"),
    ("B", "B"), ("(D)", "D"), ("I think B or C", None), ("", None),
])
def test_longbench_letter_extraction(answer, letter):
    assert scoring.extract_choice(answer) == letter


def test_multiple_choice_accuracy_and_contains_fallback():
    assert scoring.score_choice("The correct answer is (B).", "B").score == 1.0
    assert scoring.score_choice("The correct answer is (A).", "B").score == 0.0
    assert scoring.score_contains("It was Port Aldwin.", "Port Aldwin", "c").score == 1.0
    assert scoring.score_contains("Port Aldwinmouth", "Port Aldwin", "c").score == 0.0
    assert scoring.judge_verdict("extracted: X\ncorrect: **yes**") is True
    assert scoring.judge_verdict("correct: no") is False and scoring.judge_verdict("?") is None


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 21)]        # 1..20
    assert percentile(values, 95) == 19.0 and percentile(values, 50) == 10.0
    assert percentile([3.0], 95) == 3.0


# -- the paper's rows ---------------------------------------------------------------
def test_reference_rows_match_table_1():
    assert reference.paper_model("openai/gpt-5") == "GPT-5"
    assert reference.paper_model("gpt-5-2025-08-07") == "GPT-5"
    assert reference.paper_model("openai/gpt-5-mini") is None
    assert reference.paper_model("fireworks_ai/accounts/fireworks/models/"
                                 "qwen3-coder-480b-a35b-instruct") == "Qwen3-Coder-480B-A35B"
    (rlm,) = reference.rows_for("oolong-pairs", "rlm", "GPT-5")
    assert (rlm.score, rlm.cost_mean, rlm.cost_std) == (58.0, 0.33, 0.20)
    (base,) = reference.rows_for("browsecomp-plus", "base", "GPT-5")
    assert base.score == 0.0 and base.cost_mean is None and base.hit_context_limit
    assert len(reference.rows_for("longbench-codeqa", "rlm-no-sub")) == 2   # no Qwen3-8B row
    assert reference.rows_for("sniah", "rlm") == []


# -- dry run (no model, no Ray) ------------------------------------------------------
def test_dry_run_prints_an_estimate_and_calls_no_model(tmp_path, capsys):
    data = fx.write_longbench(tmp_path)
    out = tmp_path / "out"
    code = main(["bench", "paper", "--dataset", "longbench-codeqa", "--data", str(data),
                 "--model", "gpt-4o-mini", "--method", "base", "--dry-run", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "dry run: no model called" in printed and "expected_calls          2" in printed
    cost = float(printed.split("estimated_cost_usd")[1].split()[0])
    assert 0 < cost < 0.01
    assert not out.exists()


def test_missing_data_is_a_one_line_error(tmp_path, capsys):
    code = main(["bench", "paper", "--dataset", "oolong", "--model", "sim",
                 "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("rlm-ray: error:") and "needs --data" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_base_prompt_cuts_the_context_to_the_window_and_keeps_the_question():
    from rlm_ray.bench.paper.methods import OUTPUT_RESERVE_TOKENS, base_prompt
    from rlm_ray.bench.paper.tasks import Task
    from rlm_ray.tokens import count_tokens

    task = Task("t", "What is the special magic number?", "1", context_text="word " * 5000)
    whole, cut = base_prompt(task, 100_000)
    assert not cut and whole.startswith("word word") and whole.endswith("magic number?")
    window = OUTPUT_RESERVE_TOKENS + 600
    short, cut = base_prompt(task, window)
    assert cut and short.endswith("\n\nWhat is the special magic number?")
    assert 400 < count_tokens(short) <= window - OUTPUT_RESERVE_TOKENS


def test_judge_model_is_refused_where_the_benchmark_has_its_own_rule(tmp_path, capsys):
    data = fx.write_longbench(tmp_path)
    code = main(["bench", "paper", "--dataset", "longbench-codeqa", "--data", str(data),
                 "--model", "sim", "--judge-model", "gpt-4.1", "--out", str(tmp_path / "o")])
    assert code == 2 and "grades BrowseComp-Plus only" in capsys.readouterr().err
