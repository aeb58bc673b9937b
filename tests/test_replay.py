"""The replay suite: trajectories RECORDED FROM REAL MODELS running an RLM
scaffold, replayed unchanged through the real engine by the provider
SIMULATOR's `sim/replay` model.

Recordings are other projects' data, so they are not committed here: they are
read from the folder named by `$RLM_RAY_REPLAY_DIR` (with a README naming every
file's source and licence);
tests/fixtures/replay/ holds our converter and the provenance of the known set.
Without recordings the replay tests skip and say where to put them.

Every recording must end `ok` with the answer the original run recorded, through
`rlm-ray query` and through `rlm-ray run`. The expected answers come from the
recordings themselves (the scaffold's `final_answer`), never typed in here.
"""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

from rlm_ray.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "replay"


def replay_dirs() -> list[Path]:
    env = os.environ.get("RLM_RAY_REPLAY_DIR")
    return [Path(env)] if env else []


REPLAY_FILES = sorted(p for d in replay_dirs() if d.is_dir() for p in d.glob("*.json"))
NO_RECORDINGS = pytest.mark.skipif(
    not REPLAY_FILES, reason="no recorded real-model trajectories: convert them with "
    "tests/fixtures/replay/convert_rlm_log.py into a folder and set $RLM_RAY_REPLAY_DIR")


def recordings() -> list[tuple[Path, int, dict]]:
    found = []
    for path in REPLAY_FILES:
        for index, recording in enumerate(json.loads(path.read_text())["recordings"]):
            found.append((path, index, recording))
    return found


RECORDINGS = recordings()

# Recorded runs whose answer this engine cannot reproduce, and why (reported, not hidden).
KNOWN_DIFFERENCES: dict[tuple[str, int], str] = {}   # (file stem, index) -> why


def expected_answer(recorded: str) -> str:
    """The recorded answer as rlm-ray states it. The scaffold version that recorded
    `FINAL("Blue")` kept the quotes of the string literal in its answer; rlm-ray's
    FINAL(value) takes a Python literal for its value, so the answer is `Blue`."""
    try:
        value = ast.literal_eval(recorded.strip())
    except (ValueError, SyntaxError):
        return recorded
    return value if isinstance(value, str) else recorded


def known_difference(path: Path, index: int):
    reason = KNOWN_DIFFERENCES.get((path.stem, index))
    return [pytest.mark.xfail(reason=reason, strict=True)] if reason else []


@NO_RECORDINGS
def test_the_suite_has_real_recordings_with_provenance():
    assert len(RECORDINGS) >= 4
    for path, _, recording in RECORDINGS:
        assert recording["answer"], f"{path.name}: every recording carries its recorded answer"
        assert recording["model"] and recording["source"]["log"] and recording["source"]["licence"]
    for path in REPLAY_FILES:
        readme = (path.parent / "README.md").read_text()
        assert path.name in readme, f"{path.name} has no provenance entry in the README"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path, index, recording", [
    pytest.param(p, i, r, id=f"{p.stem}-{i}", marks=known_difference(p, i))
    for p, i, r in RECORDINGS])
def test_recording_replays_to_its_answer_through_query(tmp_path, capsys, path, index, recording):
    # --local: the root loop in this process (the `run` test below goes through Ray actors)
    context = tmp_path / "context.txt"
    context.write_text(recording["context"] or "")
    trajectory = tmp_path / "trajectory.json"
    code = main(["query", recording["question"], "--text", str(context),
                 "--model", f"sim/replay:{path}", "--local", "--trajectory", str(trajectory)])
    out, err = capsys.readouterr()
    saved = json.loads(trajectory.read_text())
    assert (saved["status"], saved["error"]) == ("ok", None), err
    assert code == 0
    assert saved["answer"] == expected_answer(recording["answer"])
    assert out.strip() == saved["answer"].strip()
    # the engine asked for exactly the recorded root replies: none skipped, none invented
    root_calls = [c for c in saved["calls"] if c["kind"] == "root"]
    assert len(root_calls) == len(recording["root_replies"])


@NO_RECORDINGS
@pytest.mark.timeout(900)
def test_every_recording_replays_to_its_answer_through_run(ray_session, tmp_path, capsys):
    """Each recording file as one batch with no corpus: every row carries its recording's
    own text as its `context` column, so `run` gives each question the str its recorded
    model worked on. Every file runs; the failures of all of them are reported together."""
    from rlm_ray.batch.tables import read_run

    by_file: dict[Path, list[tuple[int, dict]]] = {}
    for path, index, recording in RECORDINGS:
        if (path.stem, index) not in KNOWN_DIFFERENCES:
            by_file.setdefault(path, []).append((index, recording))
    failures: list[str] = []
    for path, items in by_file.items():
        queries = tmp_path / f"{path.stem}-queries.jsonl"
        queries.write_text("".join(json.dumps({"query_id": f"r{i}", "question": r["question"],
                                               "context": r["context"] or "",
                                               "answer": r["answer"]}) + "\n"
                                   for i, r in items))
        out = tmp_path / f"{path.stem}-results"
        code = main(["run", "--queries", str(queries), "--out", str(out),
                     "--model", f"sim/replay:{path}", "--no-progress"])
        err = capsys.readouterr().err
        if code != 0:
            failures.append(f"{path.name}: exit {code}: {err.strip().splitlines()[-1:]}")
            continue
        answers = {row["query_id"]: row for row in read_run(str(out)).answers.to_pylist()}
        for i, r in items:
            row = answers.get(f"r{i}") or {}
            got = (row.get("status"), row.get("answer"), row.get("error"))
            if got != ("ok", expected_answer(r["answer"]), None):
                failures.append(f"{path.stem}-{i}: got status={got[0]!r} error={got[2]!r} "
                                f"answer={str(got[1])[:200]!r}")
            elif row["context_chars"] != len(r["context"] or ""):
                failures.append(f"{path.stem}-{i}: ran over {row['context_chars']} chars, "
                                f"not its recorded context's {len(r['context'] or '')}")
    assert not failures, "\n".join(failures)


@pytest.mark.timeout(300)
def test_replay_mode_answers_sub_calls_through_the_engine(tmp_path, capsys):
    """The plumbing the real recordings above do not exercise (none has a sub-call):
    a scripted conversation (not a recording) whose code calls llm_query and
    llm_query_batched; the simulator answers them from the file's sub-call rules."""
    context = "alpha: 3\nbeta: 4\n"
    replay = tmp_path / "scripted.json"
    replay.write_text(json.dumps({"format": "rlm-ray-replay/1", "recordings": [{
        "question": "What is alpha times beta?",
        "root_replies": [
            "Let me look.\n```repl\nprint(context[:100])\n```",
            "I ask sub-models for each value.\n```repl\n"
            "a = int(llm_query('value of alpha in: ' + context))\n"
            "b = int(llm_query_batched(['value of beta in: ' + context])[0])\n"
            "product = a * b\nprint(product)\n```\nThat is the product.\n\nFINAL_VAR(product)"],
        "sub_calls": [{"prompt": "value of alpha in: " + context, "reply": "3"}],
        "sub_rules": [{"prompt_contains": "value of beta", "reply": "4"}]}]}))
    text = tmp_path / "context.txt"
    text.write_text(context)
    trajectory = tmp_path / "t.json"
    code = main(["query", "What is alpha times beta?", "--text", str(text), "--local",
                 "--model", f"sim/replay:{replay}", "--trajectory", str(trajectory)])
    saved = json.loads(trajectory.read_text())
    assert (code, saved["status"], saved["answer"]) == (0, "ok", "12"), capsys.readouterr().err
    assert [c["kind"] for c in saved["calls"]].count("sub") == 2


def test_converter_keeps_replies_and_sub_calls_verbatim(tmp_path):
    """convert_rlm_log.py on a small log in the official RLMLogger shape (built here):
    runs split at run_context lines, replies and sub-call replies copied as they are."""
    import subprocess
    import sys

    reply_1 = "Let me look.\n```repl\nx = llm_query('What is 2+2? ' + context)\nprint(x)\n```"
    reply_2 = "The sub-model said 4.\n\nFINAL_VAR(x)"
    lines = [
        {"type": "metadata", "root_model": "m", "backend_kwargs": {"model_name": "model-a"}},
        {"type": "run_context", "prompt": "ctx one", "root_prompt": "Q one?"},
        {"type": "iteration", "iteration": 1, "response": reply_1, "final_answer": None,
         "code_blocks": [{"code": "...", "result": {"rlm_calls": [
             {"prompt": "What is 2+2? ctx one", "response": " 4\n"}]}}]},
        {"type": "iteration", "iteration": 2, "response": reply_2, "code_blocks": [],
         "final_answer": "4"},
        {"type": "run_context", "prompt": "second prompt", "root_prompt": None},
        {"type": "iteration", "iteration": 3, "response": "FINAL(ok)", "code_blocks": [],
         "final_answer": "ok"},
    ]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "replay.json"
    subprocess.run([sys.executable, str(FIXTURES / "convert_rlm_log.py"), str(log), str(out),
                    "--source", "test log", "--licence", "MIT"], check=True, timeout=60)
    first, second = json.loads(out.read_text())["recordings"]
    assert (first["question"], first["context"], first["answer"]) == ("Q one?", "ctx one", "4")
    assert first["root_replies"] == [reply_1, reply_2] and first["model"] == "model-a"
    assert first["sub_calls"] == [{"prompt": "What is 2+2? ctx one", "reply": " 4\n"}]
    assert (second["question"], second["root_replies"], second["answer"]) == \
        ("second prompt", ["FINAL(ok)"], "ok")
