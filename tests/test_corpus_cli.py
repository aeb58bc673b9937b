"""`rlm-ray ingest` as a user runs it: the console script in a subprocess."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.codebase import KEPT, MAX_FILE_BYTES, SKIPPED, make_codebase

RLM_RAY = shutil.which("rlm-ray", path=str(Path(sys.executable).parent)) or "rlm-ray"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([RLM_RAY, *args], capture_output=True, text=True, timeout=300)


def test_ingest_prints_one_summary_line_and_reruns_incrementally(tmp_path):
    code = make_codebase(tmp_path / "code")
    out = tmp_path / "corpus"
    args = ["ingest", str(code), "--out", str(out), "--chunk-tokens", "64",
            "--max-file-bytes", str(MAX_FILE_BYTES), "--exclude", "src/util/"]
    first = run(*args)
    assert first.returncode == 0, first.stderr
    [line] = first.stdout.strip().splitlines()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["documents"] == len(KEPT) - 1      # src/util/helpers.py excluded
    assert manifest["skipped"] == SKIPPED | {"excluded": 1}
    assert f"ingested {manifest['documents']:,} documents" in line
    assert f"{manifest['tokens']:,} tokens" in line and "ignored=3" in line
    second = run(*args)
    assert second.returncode == 0 and "shards written 0" in second.stdout


@pytest.mark.parametrize("make_args, message", [
    (lambda t: ["ingest", str(t / "missing"), "--out", str(t / "o")], "source not found"),
    (lambda t: ["ingest", str(t / "empty"), "--out", str(t / "o")], "no documents to ingest"),
    (lambda t: ["ingest", str(t / "bad.jsonl"), "--out", str(t / "o")], "line 2 is not valid JSON"),
    (lambda t: ["ingest", str(t / "code"), "--out", str(t / "bad.jsonl")], "is a file"),
    (lambda t: ["ingest", str(t / "code"), "--out", str(t / "o"), "--chunk-tokens", "1"], "chunk-tokens"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, make_args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "a.py").write_text("x = 1\n")
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "text": "t"}\nnot json\n')
    result = run(*make_args(tmp_path))
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("rlm-ray: error: ") and message in line
    assert not (tmp_path / "o").exists()


def test_ingest_help_lists_the_options():
    result = run("ingest", "--help")
    assert result.returncode == 0
    for option in ("--out", "--chunk-tokens", "--max-file-bytes", "--exclude"):
        assert option in result.stdout


@pytest.mark.timeout(300)
def test_bench_corpus_runs_local_and_on_its_own_s3(stdlib_subset, tmp_path):
    """The benchmark is a command that prints figures; here only that it runs end to end."""
    result = run("bench", "corpus", "--stdlib", str(stdlib_subset), "--work", str(tmp_path / "b"),
                 "--repeats", "1")
    assert result.returncode == 0, result.stderr
    for row in ("ingest", "regex scan", "grep (limit 100)", "read doc", "count(*)", "S3 warm",
                "peak PSS (tree)", "processes:1", "processes:2"):
        assert row in result.stdout
    assert "Traceback" not in result.stderr
