"""The Ray Data processor (rlm_ray/data.py) end to end on the session's local
Ray: Parquet questions -> processor -> Parquet answers, compared row for row
with what `rlm-ray run` writes for the same questions against the same
simulator, both through the one cluster-wide rate limiter of the model."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlm_ray.batch.define_questions import define_questions, write_jsonl
from rlm_ray.batch.runner import run
from rlm_ray.batch.tables import ANSWERS, read_run
from rlm_ray.data import ProcessorConfig, build_processor
from rlm_ray.errors import UserError
from rlm_ray.sim import register_policy
from rlm_ray.sim.registry import last_user_text

SIM_MODEL = "openai/sim/rlm-policy"
# Differ between two runs of the same question by nature (clocks), nothing else may.
TIMING_COLUMNS = ("wall_s", "started_at", "finished_at")


@pytest.fixture(scope="module")
def subset_corpus(tmp_path_factory, stdlib_subset) -> str:
    from rlm_ray.corpus import ingest

    out = tmp_path_factory.mktemp("data_corpus") / "subset"
    ingest([str(stdlib_subset)], str(out))
    return str(out)


def _rlm(server) -> dict:
    from rlm_ray.llm.config import GatewayConfig

    # rpm set: calls go through the model's limiter; cache off: every call reaches the simulator.
    return {"model": SIM_MODEL, "api_base": server.base_url, "max_iterations": 12,
            "gateway": GatewayConfig(api_base=server.base_url, rpm=100_000, cache_mode="off")}


def _limiters() -> list[str]:
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("rlm-ray-limiter/")]


def _reservations(name: str) -> int:
    import ray

    from rlm_ray.llm.limiter_client import NAMESPACE

    return ray.get(ray.get_actor(name, namespace=NAMESPACE).stats.remote())["reservations"]


def _comparable(table: pa.Table) -> list[dict]:
    rows = table.drop_columns(list(TIMING_COLUMNS)).sort_by("query_id").to_pylist()
    return rows


@pytest.mark.timeout(600)
def test_parquet_in_processor_parquet_out_equals_rlm_ray_run_through_one_limiter(
        ray_session, sim, subset_corpus, stdlib_subset, tmp_path):
    import ray

    questions = define_questions(stdlib_subset, 5, seed=7)
    queries_jsonl = write_jsonl(questions, tmp_path / "q.jsonl")
    questions_parquet = tmp_path / "questions.parquet"
    pq.write_table(pa.Table.from_pylist([{k: str(v) for k, v in q.items()} for q in questions]),
                   questions_parquet)
    server = sim()
    rlm = _rlm(server)

    summary = run(subset_corpus, str(queries_jsonl), str(tmp_path / "run"), rlm=rlm,
                  concurrency=4, progress=False)
    assert summary.ran == 5
    expected = read_run(str(tmp_path / "run"), with_details=False).answers
    ours = [n for n in _limiters() if server.base_url.split(":")[-1] in n]
    assert len(ours) == 1, _limiters()
    limiter = ours[0]
    after_run = _reservations(limiter)
    run_calls = sum(expected.column("llm_calls").to_pylist())
    assert run_calls > 0 and after_run >= run_calls

    processor = build_processor(ProcessorConfig(corpus=subset_corpus, rlm=rlm, actors=1,
                                                questions_per_actor=4,
                                                lineage_uri=str(tmp_path / "lineage")))
    processor(ray.data.read_parquet(str(questions_parquet))).write_parquet(
        str(tmp_path / "answers"))
    got = pq.read_table(tmp_path / "answers")

    assert got.schema.names == ANSWERS.names   # the answers table's columns, in its order
    assert got.num_rows == 5
    assert _comparable(got.cast(ANSWERS)) == _comparable(expected)
    assert set(got.column("status").to_pylist()) == {"ok"}
    # The processor's calls went through the same (and still the only) limiter actor.
    assert [n for n in _limiters() if server.base_url.split(":")[-1] in n] == [limiter]
    processor_calls = sum(got.column("llm_calls").to_pylist())
    assert processor_calls == run_calls
    assert _reservations(limiter) - after_run >= processor_calls
    assert server.stats()["completions"] >= run_calls + processor_calls
    # The optional lineage folder is a results folder `rlm-ray show` reads: the same
    # answers, and the calls behind them.
    lineage = read_run(str(tmp_path / "lineage"))
    assert _comparable(lineage.answers) == _comparable(got.cast(ANSWERS))
    assert lineage.calls.num_rows == processor_calls
    assert {c["query_id"] for c in lineage.calls.to_pylist() if c["kind"] == "root"} == \
        set(got.column("query_id").to_pylist())


@pytest.mark.timeout(600)
def test_bad_rows_become_error_rows_and_the_pipeline_finishes(ray_session, sim, tmp_path):
    """No corpus: rows with their own text answer from it; a row that cannot
    run (empty question, bad option, no context) is an `error` row with the reason."""
    import ray

    server = sim()
    rows = [
        {"query_id": "good", "question": "What is the secret word in the text?",
         "context": "Notes.\nThe secret word is PLOVER.\nEnd.", "max_iterations": None},
        {"query_id": "empty", "question": "  ", "context": "text", "max_iterations": None},
        {"query_id": "bad-option", "question": "Anything?", "context": "text",
         "max_iterations": "many"},
        {"query_id": "no-context", "question": "Anything?", "context": None,
         "max_iterations": None},
    ]
    processor = build_processor(ProcessorConfig(rlm=_rlm(server), questions_per_actor=4))
    got = {r["query_id"]: r for r in
           processor(ray.data.from_items(rows)).take_all()}
    assert set(got) == {"good", "empty", "bad-option", "no-context"}
    assert got["good"]["status"] == "ok" and got["good"]["context_chars"] == len(rows[0]["context"])
    assert "empty question" in got["empty"]["error"]
    assert "max_iterations must be a int" in got["bad-option"]["error"]
    assert "no `context`" in got["no-context"]["error"]
    assert {got[k]["status"] for k in ("empty", "bad-option", "no-context")} == {"error"}
    assert all(got[k]["llm_calls"] == 0 for k in ("empty", "bad-option", "no-context"))


def test_bad_configuration_is_one_line_before_anything_runs(tmp_path):
    with pytest.raises(UserError, match="needs a model"):
        build_processor(ProcessorConfig(rlm={}))
    with pytest.raises(UserError, match="max_iteration"):
        build_processor(ProcessorConfig(rlm={"model": SIM_MODEL, "max_iteration": 3}))
    with pytest.raises(UserError, match="actors must be >= 1"):
        build_processor(ProcessorConfig(rlm={"model": SIM_MODEL}, actors=0))
    with pytest.raises(UserError):
        build_processor(ProcessorConfig(rlm={"model": SIM_MODEL}, corpus=str(tmp_path / "none")))


def test_a_dataset_without_a_question_column_is_refused(ray_session, sim):
    import ray

    processor = build_processor(ProcessorConfig(rlm=_rlm(sim())))
    with pytest.raises(UserError, match="lacks column"):
        processor(ray.data.from_items([{"query_id": "a", "text": "no question"}]))


@register_policy("test/data-grow")
def _grow(messages):
    """Root turns that never finish, each printing ~800 tokens: spends until stopped."""
    if last_user_text(messages).startswith("Final answer required"):
        return "FINAL(forced)"
    turn = sum(1 for m in messages if m["role"] == "assistant") + 1
    return f"Turn {turn}.\n```repl\nanswer['content'] = 'partial-{turn}'\nprint('row ' * 800)\n```"


@pytest.mark.timeout(600)
def test_one_spend_cap_shared_by_every_data_actor(ray_session, sim):
    """Two Ray Data actors (two host pools) spend from the one cap the processor
    was built with: together they stay under it, where two caps would spend twice."""
    import ray

    from rlm_ray.llm.config import GatewayConfig

    like = "gpt-5-mini"
    server = sim(bill_like={"test/data-grow": like})
    model = "openai/test/data-grow"
    rlm = {"model": model, "api_base": server.base_url, "max_iterations": 200,
           "gateway": GatewayConfig(api_base=server.base_url, price_like={model: like},
                                    cache_mode="off")}
    limit = 0.004
    processor = build_processor(ProcessorConfig(rlm=rlm, actors=2, questions_per_actor=1,
                                                batch_size=2, budget_usd=limit))
    rows = [{"query_id": f"q{i}", "question": f"spend {i}", "context": "some text"}
            for i in range(4)]
    got = processor(ray.data.from_items(rows).repartition(2)).take_all()
    assert sorted(r["query_id"] for r in got) == ["q0", "q1", "q2", "q3"]
    spent = sum(r["cost_usd"] or 0.0 for r in got)
    assert 0 < spent <= limit
    assert {r["status"] for r in got} <= {"budget_exceeded", "ok", "max_iterations"}
    assert "budget_exceeded" in {r["status"] for r in got}
