"""`rlm-ray bench paper --model sim` end to end for every benchmark: real
Ray, the real batch layer, engine and sandbox, the simulator over HTTP, the
publishers' file formats (tiny fixtures), the official scorers and the
Table-1-style output with the paper's reference rows."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from fixtures import paper as fx
from rlm_ray.batch.manifest import read_run_info
from rlm_ray.batch.tables import read_run
from rlm_ray.cli import main


def _data(name: str, folder) -> list[str]:
    """--data arguments for each benchmark's fixture files."""
    if name == "oolong":
        return ["--data", str(fx.write_oolong(folder).parent), "--context-len", "1024",
                "--limit", "2"]
    if name == "oolong-pairs":
        return ["--data", str(fx.write_pairs(folder)), "--data", str(fx.write_oolong(folder)),
                "--context-len", "1024"]
    if name == "browsecomp-plus":
        queries, corpus = fx.write_browsecomp(folder)
        return ["--data", str(queries), "--data", str(corpus), "--docs-per-query", "5",
                "--judge-model", "sim"]
    if name == "longbench-codeqa":
        return ["--data", str(fx.write_longbench(folder))]
    return ["--context-len", "512", "--limit", "2"]          # sniah: generated


EXPECTED_ROWS = {"oolong": 2, "oolong-pairs": 2, "browsecomp-plus": 2, "longbench-codeqa": 2,
                 "sniah": 2}


def _run(tmp_path, capsys, dataset: str, method: str = "rlm") -> tuple[str, list[dict], list]:
    out = tmp_path / f"{dataset}-{method}"
    code = main(["bench", "paper", "--dataset", dataset, *_data(dataset, tmp_path / "data"),
                 "--method", method, "--model", "sim", "--max-iterations", "6",
                 "--concurrency", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    per_query = pq.read_table(out / "per_query.parquet").to_pylist()
    table = pq.read_table(out / "table.parquet").to_pylist()
    assert (out / "table.md").read_text() in printed
    return printed, per_query, table


@pytest.mark.timeout(600)
@pytest.mark.parametrize("dataset", ["oolong", "oolong-pairs", "browsecomp-plus",
                                     "longbench-codeqa", "sniah"])
def test_each_benchmark_runs_end_to_end_on_the_simulator(ray_session, tmp_path, capsys,
                                                         dataset):
    printed, per_query, table = _run(tmp_path, capsys, dataset)
    assert "SIMULATOR" in printed.splitlines()[0] and "say nothing about any model" in printed
    assert len(per_query) == EXPECTED_ROWS[dataset]
    assert all(r["status"] in ("ok", "max_iterations") for r in per_query)
    assert all(0.0 <= r["score"] <= 1.0 and r["llm_calls"] >= 2 for r in per_query)
    assert all(r["cost_usd"] > 0 for r in per_query)       # notional simulator prices
    this_run = [r for r in table if r["row"] == "this run"]
    assert len(this_run) == 1 and this_run[0]["simulated"]
    assert this_run[0]["questions"] == EXPECTED_ROWS[dataset]
    papers = [r for r in table if r["row"] == "paper"]
    if dataset == "browsecomp-plus":
        # One batch per query, each over its own corpus of the query's documents.
        assert sorted(p.name for p in (tmp_path / "browsecomp-plus-rlm" / "runs").iterdir()) \
            == ["bcp-784", "bcp-785"]
        for qid in ("bcp-784", "bcp-785"):
            manifest = tmp_path / "browsecomp-plus-rlm" / "work" / "corpora" / qid / "corpus"
            assert json.loads((manifest / "manifest.json").read_text())["documents"] == 5
        # Graded by the judge model (the simulator here): its verdict, not a string match.
        assert {r["scoring"] for r in per_query} == {"judge:openai/sim/rlm-policy"}
        assert all(r["extracted"] in ("yes", "no", "unparsed") for r in per_query)
    if dataset == "sniah":
        assert not papers and "only as a plot" in printed
    else:
        # No published row for the simulator: the paper's RLM rows are shown for reference.
        assert {r["model"] for r in papers} == {"GPT-5", "Qwen3-Coder-480B-A35B", "Qwen3-8B"}
        assert "no published row for openai/sim/rlm-policy" in printed
        assert "| paper: GPT-5 RLM |" in printed
    # The questions went through the batch layer: its tables hold every answer's lineage.
    runs = sorted(p for p in (tmp_path / f"{dataset}-rlm" / "runs").iterdir())
    answered = sum(read_run(str(r)).answers.num_rows for r in runs)
    assert answered == EXPECTED_ROWS[dataset]
    calls = sum(read_run(str(r)).calls.num_rows for r in runs)
    assert calls == sum(r["llm_calls"] for r in per_query)
    if dataset == "longbench-codeqa":
        # Rerunning the same command resumes: the finished batch is read back, nothing re-asked.
        again = _run(tmp_path, capsys, dataset)[1]
        assert [(r["query_id"], r["answer"], r["cost_usd"]) for r in again] == \
            [(r["query_id"], r["answer"], r["cost_usd"]) for r in per_query]
        assert read_run(str(runs[0])).calls.num_rows == calls


@pytest.mark.timeout(600)
def test_base_method_is_one_direct_call_per_question(ray_session, tmp_path, capsys):
    printed, per_query, table = _run(tmp_path, capsys, "oolong", "base")
    assert [r["llm_calls"] for r in per_query] == [1, 1]
    assert all(r["status"] == "ok" and r["answer"] and r["input_tokens"] > 0 for r in per_query)
    assert not (tmp_path / "oolong-base" / "runs").exists()     # no RLM batch for base
    papers = {(r["model"], r["score"]) for r in table if r["row"] == "paper"}
    assert ("GPT-5", 44.0) in papers and ("Qwen3-Coder-480B-A35B", 36.0) in papers
    assert "| paper: GPT-5 Base Model |" in printed


@pytest.mark.timeout(600)
def test_rlm_without_sub_calls_never_reaches_a_sub_model(ray_session, tmp_path, capsys):
    printed, per_query, table = _run(tmp_path, capsys, "oolong-pairs", "rlm-no-sub")
    assert len(per_query) == 2
    runs = tmp_path / "oolong-pairs-rlm-no-sub" / "runs" / "text"
    calls = read_run(str(runs)).calls.to_pylist()
    assert calls and {c["kind"] for c in calls} == {"root"}
    # The batch ran with sub-calls switched off and a prompt that offers none.
    settings = read_run_info(str(runs))["rlm"]
    assert settings["max_sub_calls"] == 0
    assert "There is no sub-model" in settings["system_prompt"]
    assert "llm_query(prompt" not in settings["system_prompt"]
    assert {(r["model"], r["score"]) for r in table if r["row"] == "paper"} >= {("GPT-5", 43.9)}
    assert "RLM (no sub-calls)" in printed
