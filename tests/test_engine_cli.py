"""`rlm-ray query`: answer on stdout, one-line summary on stderr, trajectory file,
exit codes (0 answered, 1 status error, 2 bad input)."""
from __future__ import annotations

import json

import pytest

from rlm_ray.cli import main


@pytest.mark.timeout(120)
def test_query_text_file_with_the_simulator(tmp_path, capsys):
    text = tmp_path / "input.txt"
    text.write_text("nothing useful here\n")
    trajectory = tmp_path / "out" / "t.json"
    code = main(["query", "Recover from a typo: what is 6 times 7?", "--text", str(text),
                 "--model", "sim", "--local", "--trajectory", str(trajectory)])
    out, err = capsys.readouterr()
    assert code == 0 and out.strip() == "42"
    assert "SIMULATOR" in err and "status=ok" in err and "iterations=2" in err
    saved = json.loads(trajectory.read_text())
    assert saved["answer"] == "42" and saved["status"] == "ok"
    assert [c["kind"] for c in saved["calls"]] == ["root", "root"]
    assert "NameError" in saved["steps"][0]["error"]


@pytest.mark.timeout(120)
def test_query_limit_reached_still_exits_zero_with_partial(tmp_path, capsys):
    text = tmp_path / "input.txt"
    text.write_text("x\n")
    code = main(["query", "Recover from a typo: what is 6 times 7?", "--text", str(text),
                 "--model", "sim", "--local", "--max-iterations", "1",
                 "--trajectory", str(tmp_path / "t.json")])
    out, err = capsys.readouterr()
    assert code == 0 and "status=max_iterations" in err


@pytest.mark.parametrize("argv, message", [
    (["query", "/nonexistent/corpus", "q?", "--model", "sim"], "error"),
    (["query", "only-a-question", "--model", "sim"], "CORPUS and QUESTION"),
    (["query", "q?", "--text", "/nonexistent.txt", "--model", "sim"], "cannot read"),
    (["query", "q?", "--text", "/etc/hostname", "--model", "sim", "--max-iterations", "0"],
     "max_iterations"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlm-ray: error:") and message in err and "\n" not in err
