"""Scoped rows end to end: a queries file with a `scope` column through
`rlm-ray run` (real Ray, the real engine and sandbox, the provider SIMULATOR
over HTTP). The corpus holds the same needle key with a different code in
three folders, so each answer shows which documents its question could see;
a delegating question shows that child RLMs (`rlm_query_batched`) stay in
their parent's scope. Expected values come from the files the test wrote and
from `ast` over the source tree.
"""
from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

from rlm_ray.batch.tables import read_run
from rlm_ray.cli import main as cli_main

SIM_MODEL = "openai/sim/rlm-policy"
NEEDLE = "What is the secret code for Juniper?"
CODES = {"teams/red/memo.txt": "RED-11", "teams/blue/memo.txt": "BLUE-22",
         "archive/old.txt": "OLD-33"}


def haystack(code: str, filler_lines: int = 200) -> str:
    lines = [f"line {i}: the weather log notes {i % 7} clouds over the harbour"
             for i in range(filler_lines)]
    lines.insert(filler_lines // 2, f"Memo: the secret code for Juniper is {code}.")
    return "\n".join(lines) + "\n"


def functions_with_param(path: Path, param: str) -> int:
    tree = ast.parse(path.read_text())
    total = 0
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
            names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
            total += param in names
    return total


@pytest.mark.timeout(900)
def test_scoped_rows_see_only_their_scope_and_children_inherit_it(
        ray_session, sim, stdlib_subset, tmp_path, capsys):
    from rlm_ray.corpus import ingest

    source = tmp_path / "src"
    shutil.copytree(stdlib_subset, source)
    for path, code in CODES.items():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_text(haystack(code))
    (source / "teams/red/notes.txt").write_text("nothing to see here\n" * 40)
    corpus = tmp_path / "corpus"
    ingest([str(source)], str(corpus))

    delegate = ("For each of the paths json/decoder.py, textwrap.py: how many functions take "
                "a parameter named self?")
    rows = [
        {"query_id": "red", "question": NEEDLE, "scope": "teams/red/"},
        {"query_id": "blue", "question": NEEDLE, "scope": ["teams/blue/**"]},
        {"query_id": "one-doc", "question": NEEDLE, "scope": json.dumps(["archive/old.txt"])},
        {"query_id": "empty", "question": NEEDLE, "scope": "teams/green/"},
        {"query_id": "tree-scoped", "question": delegate, "scope": "json/"},
        {"query_id": "tree-whole", "question": delegate},
    ]
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps(r) + "\n" for r in rows))
    server = sim()
    out = tmp_path / "results"
    code = cli_main(["run", str(corpus), "--queries", str(queries), "--out", str(out),
                     "--model", SIM_MODEL, "--api-base", server.base_url, "--no-progress",
                     "--max-iterations", "8", "--max-depth", "2"])
    err = capsys.readouterr().err
    assert code == 0, err
    got = {r["query_id"]: r for r in read_run(str(out)).answers.to_pylist()}

    # Unscoped, the needle's first hit in path order is archive/old.txt: each scoped
    # row answering its own folder's code saw nothing else.
    for query_id, path in [("red", "teams/red/memo.txt"), ("blue", "teams/blue/memo.txt"),
                           ("one-doc", "archive/old.txt")]:
        assert (got[query_id]["status"], got[query_id]["answer"]) == ("ok", CODES[path]), got[query_id]

    empty = got["empty"]
    assert (empty["status"], empty["answer"], empty["llm_calls"]) == ("error", None, 0), empty
    assert "teams/green/" in empty["error"] and "matches no document" in empty["error"]

    decoder = functions_with_param(source / "json/decoder.py", "self")
    textwrap = functions_with_param(source / "textwrap.py", "self")
    assert decoder > 0 and textwrap > 0
    assert got["tree-whole"]["answer"] == f"json/decoder.py={decoder}, textwrap.py={textwrap}"
    # In scope json/, the child asked about textwrap.py cannot see it: 0, not the real count.
    scoped = got["tree-scoped"]
    assert scoped["answer"] == f"json/decoder.py={decoder}, textwrap.py=0", scoped
    assert scoped["max_depth_reached"] == 2
    # ... and it is the children who answered 0 (an int), not the parent filling in for them.
    steps = read_run(str(out)).steps.to_pylist()
    printed = "\n".join(s["output"] or "" for s in steps if s["query_id"] == "tree-scoped")
    assert f"child answers: {{'json/decoder.py': {decoder}, 'textwrap.py': 0}}" in printed, printed
