"""The formulas behind the printed figures: memory per question in flight is
taken at one sample (never two moments mixed), and an unknown price reads n/a
in every batch output, never $0."""
from __future__ import annotations

import json
import re

import pytest

from rlm_ray.batch.billing_text import NO_PRICE, dollars, usd_total
from rlm_ray.batch.progress import Tally
from rlm_ray.bench.memory import MemoryPeak, TreePss, tree_pss


def _tree(total_mb: float, processes: int = 3) -> TreePss:
    return TreePss(roots_mb=total_mb * 0.75, descendants_mb=total_mb * 0.25, processes=processes)


def test_memory_per_question_divides_the_peak_by_the_questions_in_flight_at_that_sample():
    peak = MemoryPeak()
    # 128 in flight at 1,500 MB; later, as the queue drains, 2,000 MB with 40 in flight.
    for total, in_flight in ((400, 0), (1500, 128), (1800, 100), (2000, 40), (900, 3)):
        peak.observe(_tree(total), in_flight)
    assert peak.pss_mb == 2000 and peak.in_flight_at_peak == 40
    assert peak.max_in_flight == 128 and peak.samples == 5
    assert peak.per_question_mb == pytest.approx(2000 / 40)   # not 2000 / 128
    assert peak.roots_mb_at_peak + peak.descendants_mb_at_peak == pytest.approx(2000)


def test_a_peak_with_no_question_in_flight_has_no_per_question_figure():
    peak = MemoryPeak()
    peak.observe(_tree(300), 2)
    peak.observe(_tree(700), 0)        # idle hosts after the last question
    assert peak.in_flight_at_peak == 0 and peak.per_question_mb is None
    assert MemoryPeak().per_question_mb is None


def test_tree_pss_counts_this_process_once_and_skips_dead_pids():
    import os

    mine = tree_pss([os.getpid()])
    twice = tree_pss([os.getpid(), os.getpid(), 2**22 + 12345])   # a pid that cannot exist
    assert mine.processes >= 1 and mine.roots_mb > 0
    assert twice.processes == mine.processes
    assert twice.roots_mb == pytest.approx(mine.roots_mb, rel=0.2)


def test_unknown_prices_read_na_and_partial_ones_say_what_is_left_out():
    assert usd_total(0.0, priced=0, unpriced=3) == NO_PRICE
    assert usd_total(0.0, priced=0, unpriced=0) == "$0.0000"      # nothing ran: a true $0
    assert usd_total(1.5, priced=2, unpriced=1) == "$1.5000 + 1 unpriced"
    assert dollars([None, None]) == NO_PRICE and dollars([0.25, None], places=2) == "$0.25 + 1 unpriced"
    tally = Tally(total=3)
    for cost in (None, None):
        tally.record({"status": "ok", "cost_usd": cost, "llm_calls": 2})
    assert tally.cost_text() == NO_PRICE and "$" not in tally.line()
    assert tally.cost_figures(None)["unpriced_answers"] == 2


@pytest.mark.timeout(300)
def test_batch_against_a_model_with_no_known_price_reads_na_in_summary_and_show(
        ray_session, stdlib_subset, tmp_path, capsys):
    """`rlm-ray run --model sim` (the SIMULATOR has no litellm price) then
    `rlm-ray show`: every dollar figure of both reads n/a, none reads $0."""
    from rlm_ray.batch.define_questions import define_questions, write_jsonl
    from rlm_ray.cli import main
    from rlm_ray.corpus import ingest

    corpus = str(tmp_path / "corpus")
    ingest([str(stdlib_subset)], corpus)
    queries = write_jsonl(define_questions(stdlib_subset, 2, seed=3), tmp_path / "q.jsonl")
    out = str(tmp_path / "out")
    assert main(["run", corpus, "--queries", str(queries), "--out", out, "--model", "sim",
                 "--concurrency", "2", "--no-progress", "--max-iterations", "6"]) == 0
    summary = capsys.readouterr().out
    cost_line = next(line for line in summary.splitlines() if "cost (this run)" in line)
    assert "n/a" in cost_line and "$" not in cost_line
    assert not re.search(r"\$0\.0+\b", summary), summary
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["cost_usd_this_run"] is None and info["cost"]["unpriced_answers"] == 2
    assert main(["show", out]) == 0
    shown = capsys.readouterr().out
    cost_line = next(line for line in shown.splitlines() if re.search(r"\bcost\b", line))
    assert "n/a" in cost_line
    assert not re.search(r"\$0\.0+\b", shown), shown


def test_ingest_scaling_compares_worker_processes_of_one_backend(tmp_path):
    """1 worker and N workers of the same backend: a forced backend keeps
    `parallelism=1` in a worker process instead of falling back in-process."""
    from rlm_ray.corpus import ingest
    from rlm_ray.corpus.parallel import Plan, make_plan
    from rlm_ray.errors import UserError

    assert make_plan(1, 10, backend="processes") == Plan(1, "processes")
    assert make_plan(2, 10, backend="processes") == Plan(2, "processes")
    assert make_plan(1, 10) == Plan(1, "inline")
    with pytest.raises(UserError):
        make_plan(1, 10, backend="carrier-pigeon")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("def a():\n    return 1\n")
    manifest = ingest([str(tmp_path / "src")], str(tmp_path / "corpus"), parallelism=1,
                      backend="processes")
    assert manifest["ingest"]["parallelism"] == "processes:1" and manifest["documents"] == 1


def test_keyless_prompts_cache_less_as_the_simulator_spreads_them_over_more_caches():
    """Why `bench cost` sweeps the simulator's cache count: the same long prefix
    sent without a routing key hits less often over 8 caches than over 1, while
    a routing key reaches its one cache whatever the count."""
    from rlm_ray.sim.caching import PromptCache

    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    tokens = [2000, 2100]

    def hits(replicas: int, key: str | None) -> int:
        cache = PromptCache(replicas=replicas, seed=0)
        return sum(cache.bill("m", "automatic", messages, tokens, key).cached_tokens > 0
                   for _ in range(40))

    assert hits(1, None) == 39 > hits(8, None)
    assert hits(8, "conversation-1") == hits(1, "conversation-1") == 39
