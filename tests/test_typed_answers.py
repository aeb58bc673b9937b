"""Typed answers: an output schema the answer must fit. The REAL engine (real
sandbox, litellm over HTTP to the provider SIMULATOR, whose scripted root
builds a dict of the schema's shape in the REPL), real Ray and Parquet for
the batch, DuckDB over the written files. Expected values are computed here
from the test's own source files with `ast`, never copied from the engine."""
from __future__ import annotations

import ast
import html
import io
import json
from pathlib import Path

import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlm_ray.corpus import Corpus
from rlm_ray.engine import RLM
from rlm_ray.engine.output_schema import parse
from rlm_ray.errors import UserError
from rlm_ray.sim import register_policy
from rlm_ray.sim.policies import rlm_policy

SIM = "openai/sim/rlm-policy"
SPY = "openai/test/typed-spy"
SEEN: list[list[dict]] = []     # every root conversation the spy answered


@register_policy("test/typed-spy")
def spy(messages):
    """The simulator's scripted root, recording what it was sent."""
    if any(m["role"] == "system" for m in messages):
        SEEN.append(messages)
    return rlm_policy(messages)


SOURCES = {
    "shapes.py": "class ShapeError(Exception):\n    pass\n\n\nclass Square:\n    side = 2\n",
    "parse.py": ("class ParseError(ValueError):\n    pass\n\n\n"
                 "class TokenError(Exception):\n    '''bad token'''\n"),
    "util.py": "def helper(x):\n    return x * 2\n\n\nclass Box:\n    pass\n",
}
COUNT_SCHEMA = {"type": "object", "required": ["count", "any"],
                "properties": {"count": {"type": "integer"}, "any": {"type": "boolean"}}}
CLASSES_SCHEMA = {
    "type": "object", "required": ["defines", "count", "classes"],
    "properties": {"defines": {"type": "boolean"}, "count": {"type": "integer"},
                   "classes": {"type": "array", "items": {"type": "string"}},
                   "note": {"type": ["string", "null"]}}}
COUNT_QUESTION = "How many modules define a class whose name ends in 'Error'?"
CLASSES_QUESTION = "Which classes inherit from Exception?"


def _classes(predicate) -> list[tuple[str, str]]:
    """(module, class) pairs of SOURCES whose ClassDef satisfies `predicate`."""
    found = []
    for path, text in SOURCES.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and predicate(node):
                found.append((path, node.name))
    return found


ERROR_MODULES = len({p for p, _ in _classes(lambda n: n.name.endswith("Error"))})
EXCEPTION_CLASSES = sorted(n for _, n in _classes(
    lambda c: any(isinstance(b, ast.Name) and b.id == "Exception" for b in c.bases)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    from rlm_ray.corpus import ingest

    src = tmp_path_factory.mktemp("typed_src")
    for name, text in SOURCES.items():
        (src / name).write_text(text)
    out = tmp_path_factory.mktemp("typed_corpus") / "c"
    ingest([str(src)], str(out))
    return str(out)


def _answer(server, corpus, question, schema, model=SIM):
    return RLM(model, SIM, api_base=server.base_url, local=True, max_iterations=8,
               output_schema=schema).answer(Corpus.open(corpus), question)


# -- the schema itself ---------------------------------------------------------------
@pytest.mark.parametrize("schema, word", [
    ({"$ref": "https://example.com/s.json"}, "$ref"),
    ({"type": "object", "properties": {"a": {"oneOf": [{"type": "string"}]}}}, "oneOf"),
    ({"type": ["string", "integer"]}, "mixes types"),
    ({"type": "object", "properties": {"a": {}}}, "no type"),
    ("{not json", "not valid JSON"),
    ({"type": "strnig"}, "unknown type"),
])
def test_unsupported_schemas_are_refused_with_one_line(schema, word):
    with pytest.raises(UserError) as caught:
        parse(schema)
    message = str(caught.value)
    assert word in message and "\n" not in message


def test_arrow_type_follows_the_schema():
    from rlm_ray.batch.typed import arrow_type

    schema = {"type": "object", "required": ["licence", "versions", "meta"],
              "properties": {
                  "licence": {"enum": ["MIT", "BSD", "other"]},
                  "versions": {"type": "array", "items": {"type": "number"}},
                  "vendored": {"type": ["boolean", "null"]},
                  "meta": {"type": "object", "required": ["files"],
                           "properties": {"files": {"type": "integer"},
                                          "free": {"type": "object"}}}}}
    assert arrow_type(parse(schema).schema) == pa.struct([
        pa.field("licence", pa.string(), nullable=False),
        pa.field("versions", pa.list_(pa.float64()), nullable=False),
        pa.field("vendored", pa.bool_()),
        pa.field("meta", pa.struct([pa.field("files", pa.int64(), nullable=False),
                                    pa.field("free", pa.string())]), nullable=False)])


# -- the engine ------------------------------------------------------------------------
def test_a_fitting_dict_ends_ok_with_its_typed_value(sim_server, corpus):
    result = _answer(sim_server, corpus, CLASSES_QUESTION, CLASSES_SCHEMA)
    assert result.status == "ok", result.error
    jsonschema.validate(result.output, CLASSES_SCHEMA)          # independently of the engine
    assert sorted(result.output["classes"]) == EXCEPTION_CLASSES
    assert result.output["count"] == len(EXCEPTION_CLASSES)
    assert result.output["defines"] is True
    assert json.loads(result.answer) == result.output          # the raw answer is its JSON


def test_a_misfit_gets_the_validators_message_and_is_fixed_next_turn(sim_server, corpus):
    SEEN.clear()
    result = _answer(sim_server, corpus, COUNT_QUESTION, COUNT_SCHEMA, model=SPY)
    assert result.status == "ok", result.error
    assert result.output == {"count": ERROR_MODULES, "any": ERROR_MODULES > 0}
    last = SEEN[-1]
    assert "```json" in last[0]["content"] and '"count"' in last[0]["content"]
    feedback = [m["content"] for m in last if m["role"] == "user"]
    # The first draft held the count as text: the validator's own message came back.
    first_draft = jsonschema.Draft202012Validator(COUNT_SCHEMA)
    expected = next(first_draft.iter_errors({"count": str(ERROR_MODULES), "any": True})).message
    misfits = [f for f in feedback if "does not match the output schema" in f]
    assert len(misfits) == 1 and f"$.count: {expected}" in misfits[0]
    assert feedback[-1] == misfits[0]       # the fix came in the reply right after it
    SEEN.clear()
    without = RLM(SPY, SIM, api_base=sim_server.base_url, local=True, max_iterations=8)
    plain = without.answer(Corpus.open(corpus), COUNT_QUESTION)
    assert plain.status == "ok" and plain.output is None and plain.answer == str(ERROR_MODULES)
    assert "output schema" not in SEEN[-1][0]["content"]      # text answers: prompt unchanged
    assert result.iterations == plain.iterations + 1           # the misfit cost one reply


def test_an_answer_that_never_fits_ends_invalid_output_with_its_raw_answer(sim_server, corpus):
    impossible = {**COUNT_SCHEMA, "properties": {
        "count": {"type": "integer", "maximum": ERROR_MODULES - 1},
        "any": {"type": "boolean"}}}
    result = _answer(sim_server, corpus, COUNT_QUESTION, impossible)
    assert result.status == "invalid_output"
    assert result.output is None
    assert json.loads(result.answer) == {"count": ERROR_MODULES, "any": True}   # kept as written
    assert "maximum" in result.error and "3 tries" in result.error


# -- typed result tables -----------------------------------------------------------------
def test_batch_writes_a_typed_output_column_duckdb_reads_and_resume_keeps_the_schema(
        ray_session, sim, corpus, tmp_path, capsys):
    import duckdb

    from rlm_ray.batch.runner import run
    from rlm_ray.batch.tables import read_run
    from rlm_ray.cli import main as cli_main
    from rlm_ray.llm.config import GatewayConfig

    at_most_one = {"type": "object", "required": ["count", "any"], "properties": {
        "count": {"type": "integer", "maximum": 1}, "any": {"type": "boolean"},
        "note": {"type": ["string", "null"]}}}
    questions = {"square": "How many modules define a class whose name ends in 'Square'?",
                 "box": "How many modules define a class whose name ends in 'Box'?",
                 "errors": COUNT_QUESTION}
    expected = {qid: len({p for p, _ in _classes(lambda n, s=q.split("'")[1]:
                                                  n.name.endswith(s))})
                for qid, q in questions.items()}
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps({"query_id": k, "question": q}) + "\n"
                               for k, q in questions.items()))
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(at_most_one))
    server = sim()
    out = tmp_path / "results"
    rlm = {"model": SIM, "api_base": server.base_url, "max_iterations": 8,
           "gateway": GatewayConfig(api_base=server.base_url, cache_mode="off"),
           "output_schema": parse(at_most_one)}
    summary = run(corpus, str(queries), str(out), rlm=rlm, concurrency=3, progress=False)
    assert summary.all_terminal

    parts = sorted((out / "answers").glob("part-*.parquet"))
    from rlm_ray.batch.typed import arrow_type

    column = pq.read_schema(parts[0]).field("output")
    assert column.type == arrow_type(at_most_one) == pa.struct([
        pa.field("count", pa.int64(), nullable=False), pa.field("any", pa.bool_(), nullable=False),
        pa.field("note", pa.string())])
    rows = {r["query_id"]: r for r in read_run(str(out)).answers.to_pylist()}
    for qid, count in expected.items():
        if count <= 1:
            assert rows[qid]["status"] == "ok", rows[qid]["error"]
            assert rows[qid]["output"] == {"count": count, "any": count > 0, "note": None}
        else:   # the honest count breaks the maximum: kept raw, not typed
            assert rows[qid]["status"] == "invalid_output"
            assert rows[qid]["output"] is None
            assert json.loads(rows[qid]["answer"])["count"] == count

    # DuckDB reads the struct column as it is: no JSON parsing.
    grouped = duckdb.sql(
        f"SELECT output.count AS n, count(*) AS rows FROM read_parquet('{out}/answers/*.parquet') "
        "GROUP BY 1 ORDER BY 1 NULLS LAST").fetchall()
    typed_counts = sorted(c for c in expected.values() if c <= 1)
    assert grouped == [(n, typed_counts.count(n)) for n in sorted(set(typed_counts))] + \
        [(None, sum(c > 1 for c in expected.values()))]

    # `show` and its page display the typed values.
    from rlm_ray.batch.show import show

    overview, one = io.StringIO(), io.StringIO()
    show(str(out), html_path=str(tmp_path / "page.html"), stream=overview)
    show(str(out), query_id="box", stream=one)
    assert "output" in overview.getvalue() and "invalid_output" in overview.getvalue()
    assert '"count": 1,' in one.getvalue() and '"any": true' in one.getvalue()
    page = html.unescape((tmp_path / "page.html").read_text())
    assert '"count": 1,' in page and "s-invalid_output" in page

    info = json.loads((out / "run.json").read_text())
    assert info["output_schema"] == at_most_one
    assert info["output_schema_sha256"] == parse(at_most_one).sha256

    # Resuming the folder with another schema is refused, in one line, before any model call.
    other = tmp_path / "other.json"
    other.write_text(json.dumps(COUNT_SCHEMA))
    before = server.stats()["requests"]
    code = cli_main(["run", corpus, "--queries", str(queries), "--out", str(out),
                     "--model", SIM, "--api-base", server.base_url, "--retry-failed",
                     "--output-schema", str(other), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "output schema" in err[0], err
    assert server.stats()["requests"] == before
    # The same schema resumes: nothing left to do (failed rows stay without --retry-failed).
    again = run(corpus, str(queries), str(out), rlm=rlm, concurrency=3, progress=False)
    assert again.ran == 0 and again.skipped == len(questions)


def test_pipeline_specs_take_an_output_schema(tmp_path):
    from rlm_ray.batch.pipeline import load_spec, output_schema_of

    base = ("name: p\nsources: [src]\ncorpus: c\noutput: o\nmodel: sim\n"
            "questions: [{query_id: a, question: Count them.}]\n")
    inline = tmp_path / "inline.yaml"
    inline.write_text(base + "output_schema: {type: object, properties: {n: {type: integer}}}\n")
    assert output_schema_of(load_spec(str(inline))).schema["properties"]["n"] == {
        "type": "integer"}
    (tmp_path / "s.json").write_text(json.dumps(COUNT_SCHEMA))
    from_file = tmp_path / "file.yaml"
    from_file.write_text(base + f"output_schema: {tmp_path / 's.json'}\n")
    assert output_schema_of(load_spec(str(from_file))).schema == COUNT_SCHEMA
    bad = tmp_path / "bad.yaml"
    bad.write_text(base + "output_schema: {anyOf: [{type: string}, {type: integer}]}\n")
    with pytest.raises(UserError, match="anyOf"):
        load_spec(str(bad))


# -- every way of finishing, with a schema -------------------------------------------------
TEXT = "alpha beta gamma beta\n"
PAIR = {"type": "object", "required": ["words", "first"],
        "properties": {"words": {"type": "integer"}, "first": {"type": "string"}}}
WORDS_PAIR = {"words": len(TEXT.split()), "first": TEXT.split()[0]}


def _scripted(name: str, *replies: str) -> str:
    @register_policy(f"test/typed-{name}")
    def policy(messages):
        turn = sum(m["role"] == "assistant" for m in messages)
        return replies[min(turn, len(replies) - 1)]
    return f"openai/test/typed-{name}"


@pytest.mark.parametrize("schema, replies, expected", [
    (PAIR, ["```repl\nd = {'words': len(context.split()), 'first': context.split()[0]}\n```\n"
            "FINAL_VAR(d)"], WORDS_PAIR),
    (PAIR, ["```repl\nanswer['content'] = {'words': len(context.split()), "
            "'first': context.split()[0]}\nanswer['ready'] = True\n```"], WORDS_PAIR),
    (PAIR, ['FINAL({"words": %d, "first": "%s"})' % (WORDS_PAIR["words"], WORDS_PAIR["first"])],
     WORDS_PAIR),
    ({"type": "string"}, ["FINAL(42)"], "42"),              # a JSON-looking string stays a string
    ({"type": "integer"}, ["FINAL(42)"], 42),
    ({"type": ["integer", "null"]}, ["```repl\nFINAL(None)\n```"], None),
    ({"type": "boolean"}, ["```repl\nFINAL(len(context) > 3)\n```"], True),
    ({"type": "string"}, ["```repl\ns = '[1, 2]'\n```\nFINAL_VAR(s)"], "[1, 2]"),
])
def test_every_finishing_form_gives_the_typed_value(sim_server, schema, replies, expected):
    model = _scripted(f"form-{abs(hash((json.dumps(schema), *replies)))}", *replies)
    result = RLM(model, SIM, api_base=sim_server.base_url, local=True, max_iterations=3,
                 output_schema=schema).answer(TEXT, "Count the words; give the first.")
    assert result.status == "ok", result.error
    assert result.output == expected and result.iterations == 1


def test_query_cli_prints_the_typed_value_and_refuses_a_bad_schema(sim_server, tmp_path,
                                                                   capsys):
    from rlm_ray.cli import main

    model = _scripted("cli", "```repl\nd = {'words': len(context.split()), "
                             "'first': context.split()[0]}\n```\nFINAL_VAR(d)")
    (tmp_path / "in.txt").write_text(TEXT)
    (tmp_path / "s.json").write_text(json.dumps(PAIR))
    (tmp_path / "bad.json").write_text(json.dumps({"oneOf": [{"type": "string"}]}))
    argv = ["query", "q?", "--text", str(tmp_path / "in.txt"), "--model", model,
            "--api-base", sim_server.base_url, "--local", "--trajectory",
            str(tmp_path / "t.json")]
    assert main(argv + ["--output-schema", str(tmp_path / "s.json")]) == 0
    assert json.loads(capsys.readouterr().out) == WORDS_PAIR
    assert main(argv + ["--output-schema", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "oneOf" in err[0], err


def test_nested_typed_values_round_trip_through_parquet_and_duckdb(tmp_path):
    """The writer and reader alone (no model): nested structs, lists, nulls, free-form parts."""
    import datetime as dt

    import duckdb

    from rlm_ray.batch.tables import FinishedQuestion, TableWriter, read_run

    schema = parse({"type": "object", "required": ["licence", "meta"], "properties": {
        "licence": {"enum": ["MIT", "BSD", "other"]},
        "versions": {"type": "array", "items": {"type": "number"}},
        "meta": {"type": "object", "required": ["files"],
                 "properties": {"files": {"type": "integer"}, "extra": {"type": "object"}}}}})
    values = [{"licence": "MIT", "versions": [3.11, 3.12], "unlisted": 1,
               "meta": {"files": 4.0, "extra": {"k": [1]}}},
              {"licence": "BSD", "meta": {"files": 9}}, None]
    now = dt.datetime.now(dt.timezone.utc)
    writer = TableWriter(str(tmp_path), output_schema=schema)
    for index, value in enumerate(values):
        writer.add(FinishedQuestion({"query_id": f"q{index}", "question": "?", "status": "ok",
                                     "output": value, "started_at": now, "finished_at": now}))
    writer.flush()
    rows = {r["query_id"]: r["output"] for r in read_run(str(tmp_path)).answers.to_pylist()}
    assert rows["q0"] == {"licence": "MIT", "versions": [3.11, 3.12],
                          "meta": {"files": 4, "extra": '{"k": [1]}'}}   # unlisted key dropped
    assert rows["q1"] == {"licence": "BSD", "versions": None, "meta": {"files": 9, "extra": None}}
    assert rows["q2"] is None
    got = duckdb.sql(f"SELECT output.licence, output.meta.files, len(output.versions) "
                     f"FROM read_parquet('{tmp_path}/answers/*.parquet') ORDER BY query_id"
                     ).fetchall()
    assert got == [("MIT", 4, 2), ("BSD", 9, None), (None, None, None)]
