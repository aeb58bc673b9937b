"""`rlm-ray bench` end to end through the CLI: real Ray, the real engine and
sandbox, the simulator over HTTP, real corpora and result tables."""
from __future__ import annotations

import json

import pytest

from rlm_ray.cli import main


def test_bad_sizes_are_a_one_line_user_error(tmp_path, capsys):
    code = main(["bench", "quality", "--suite", "sniah", "--sizes", "lots", "--model", "sim",
                 "--out", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("rlm-ray: error:") and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.timeout(400)
def test_quality_sniah_two_sizes_end_to_end(ray_session, tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["bench", "quality", "--suite", "sniah", "--sizes", "8192,16384", "--model", "sim",
                 "--concurrency", "2", "--out", str(out), "--workdir", str(tmp_path / "work")])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [row["size"] for row in summary] == [8192, 16384]
    for row in summary:
        assert row["accuracy"] == 1.0 and row["statuses"] == {"ok": 5}
        assert row["cost_per_query"] > 0 and row["calls_per_query"] >= 2
    # The root prompt does not grow with the haystack (the corpus stays out of it).
    small, large = (row["root_prompt_tokens"] for row in summary)
    assert 0 < large < small * 1.2
    assert (out / "summary.md").read_text().count("\n| ") >= 3
    assert (out / "sniah.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    per_query = json.loads((out / "per_query.json").read_text())
    assert len(per_query) == 10 and all(r["score"] == 1.0 for r in per_query)
    assert "| 8," in capsys.readouterr().out


@pytest.mark.timeout(300)
def test_compare_fanout_against_the_plain_loop(ray_session, tmp_path, capsys):
    out = tmp_path / "compare"
    code = main(["bench", "compare", "--no-rlms", "--skip-batch", "--chunks", "24",
                 "--latency-ms", "300", "--baseline-concurrency", "4", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "compare.json").read_text())
    phases = {p["system"]: p for p in result["phases"]}
    assert set(phases) == {"rlm-ray", "asyncio+litellm"}
    ours, plain = phases["rlm-ray"], phases["asyncio+litellm"]
    assert ours["completed"] and ours["correct"] == 1.0 and plain["correct"] == 1.0
    assert ours["failed_calls"] == 0 and plain["failed_calls"] == 0
    assert ours["requests"] >= 24 + 2 and plain["requests"] == 24
    # rlm-ray sends the map in one wave; the loop is capped at 4 in flight.
    assert ours["max_concurrency"] > plain["max_concurrency"] == 4
    assert "skipped (--no-rlms)" in result["header"]
    assert "rlm-ray burst pacing" in result["header"]   # the simulator's window slides
    # Where the question's CPU went, the simulator's (same cores, not ours) apart.
    cpu = ours["cpu_s"]
    assert cpu["gateway, limiter and budget actors"] > 0 and cpu["host actors"] > 0
    assert cpu["provider SIMULATOR (not rlm-ray)"] > 0
    printed = capsys.readouterr().out
    assert "faster wall time than asyncio+litellm" in printed
    assert "fan-out: rlm-ray CPU-s over the question" in printed


def test_sizes_parse_powers_and_filters():
    from rlm_ray.bench.commands import choose_sizes, parse_size
    from rlm_ray.errors import UserError

    assert parse_size("2^13") == 8192 and parse_size("16_384") == 16384
    assert choose_sizes((8192, 16384, 32768), None, "2^14") == [8192, 16384]
    assert choose_sizes((8192,), "2^20,8192,8192", None) == [8192, 2 ** 20]
    for bad in ("12", "2^x", "lots"):
        with pytest.raises(UserError):
            parse_size(bad)


@pytest.mark.timeout(600)
def test_cost_bench_prints_both_savings_per_simulator_cache_count(ray_session, tmp_path, capsys):
    """`bench cost` on a small oolong case (the SIMULATOR billing like gpt-5-mini
    with 8 caches): auto never dearer than off, both savings printed from the
    batch's own calls table, the cache count in its own column."""
    code = main(["bench", "cost", "--size", "2^14", "--seeds", "0", "--like", "gpt-5-mini",
                 "--cache-replicas", "8",
                 "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out")])
    assert code == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| gpt-5-mini")]
    off, auto = ({"caches": r[1].strip(), "mode": r[2].strip(), "turns": float(r[4]),
                  "usd": float(r[7]), "vs_off": r[9].strip(), "vs_none": r[10].strip()}
                 for r in rows)
    assert (off["mode"], auto["mode"]) == ("off", "auto") and off["caches"] == auto["caches"] == "8"
    assert auto["turns"] >= 4 and 0 < auto["usd"] <= off["usd"]
    assert auto["vs_off"].endswith("%") and float(auto["vs_none"].rstrip("%")) > 0
    assert main(["bench", "cost", "--cache-replicas", "0", "--out", str(tmp_path / "o3")]) == 2
    assert main(["bench", "cost", "--seeds", "x", "--out", str(tmp_path / "o2")]) == 2


@pytest.mark.timeout(600)
def test_batch_bench_prints_cpu_per_question_and_both_floors(ray_session, stdlib_subset, tmp_path,
                                                             capsys):
    """`bench batch` over a small codebase: every question ok, CPU per question
    counted over every kind of process (sandboxes included, whose workers are
    killed and never reaped), and the wall printed against its floors."""
    code = main(["bench", "batch", "--concurrency", "3", "--questions", "3", "--latency-ms", "200",
                 "--source", str(stdlib_subset), "--workdir", str(tmp_path / "work")])
    assert code == 0
    out = capsys.readouterr().out
    lines = {line.strip().split("  ")[0]: line.strip() for line in out.splitlines() if line.strip()}
    assert lines["statuses"].endswith("ok=3")

    def seconds(label: str) -> float:
        text = lines[label][len(label):].strip()
        return float(text.split(" s")[0])

    total = seconds("CPU per question, all batch processes")
    parts = {k: seconds(k) for k in ("sandboxes (bwrap + worker)", "host actors",
                                     "query workers", "driver")}
    assert all(v > 0 for v in parts.values()), parts
    assert sum(parts.values()) <= total + 0.01
    assert seconds("latency floor") >= 3 * 0.2        # at least three root turns at 0.2 s
    assert "x the floor" in lines["wall (batch, hosts warm)"]
    assert seconds("CPU floor (batch CPU / cores)") > 0
