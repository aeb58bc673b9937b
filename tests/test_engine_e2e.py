"""The engine's must-shows, end to end: real local Ray (ray_session), the real
sandbox, litellm over HTTP to the SIMULATOR's scripted `sim/rlm-policy`
(docs/architecture.md, "Question families"), real corpora (the CPython stdlib)
and exact answers computed here with `ast`."""
from __future__ import annotations

import ast
import random
from collections import Counter
from pathlib import Path

import pytest

from rlm_ray.engine import RLM

NEEDLE_KEY, NEEDLE_VALUE = "ORCHID-7", "4471-XQ"
NEEDLE_QUESTION = f"What is the secret code for {NEEDLE_KEY}?"
POLICY = "openai/sim/rlm-policy"
# The interpreter's own library, not whatever is installed into it.
STDLIB_EXCLUDE = ["site-packages/", "__pycache__/"]


def _needle_dir(root: Path) -> Path:
    needle = root / "needle"
    needle.mkdir()
    (needle / "field_notes.txt").write_text(
        "Field notes, unrelated chatter.\n"
        f"The secret code for {NEEDLE_KEY} is {NEEDLE_VALUE}.\nMore chatter.\n")
    return needle


@pytest.fixture(scope="session")
def stdlib_needle_corpus(tmp_path_factory, stdlib_dir):
    """The WHOLE stdlib (~10M tokens) plus one needle document, ingested once."""
    from rlm_ray.corpus import Corpus, ingest

    root = tmp_path_factory.mktemp("stdlib_needle")
    ingest([str(stdlib_dir), str(_needle_dir(root))], str(root / "corpus"),
           exclude=STDLIB_EXCLUDE)
    return Corpus.open(str(root / "corpus"))


@pytest.fixture(scope="session")
def subset_corpus(tmp_path_factory, stdlib_subset):
    from rlm_ray.corpus import Corpus, ingest

    root = tmp_path_factory.mktemp("subset_corpus")
    ingest([str(stdlib_subset), str(_needle_dir(root))], str(root / "corpus"))
    return Corpus.open(str(root / "corpus"))


@pytest.fixture(scope="module")
def policy_sim():
    """One zero-latency SIMULATOR shared by this module's tests."""
    from rlm_ray.sim import SimServer

    with SimServer() as server:
        yield server


def _first_root_prompt_tokens(result) -> int:
    return next(c["prompt_tokens"] for c in result.calls if c["kind"] == "root")


@pytest.mark.timeout(600)
def test_needle_over_the_whole_stdlib_with_a_constant_root_prompt(
        ray_session, sim, stdlib_needle_corpus, subset_corpus):
    server = sim()
    rlm = RLM(POLICY, api_base=server.base_url)
    big = rlm.answer(stdlib_needle_corpus, NEEDLE_QUESTION)
    small = rlm.answer(subset_corpus, NEEDLE_QUESTION)
    assert (big.status, big.answer) == ("ok", NEEDLE_VALUE)
    assert (small.status, small.answer) == ("ok", NEEDLE_VALUE)
    assert len(stdlib_needle_corpus) > 20 * len(subset_corpus)
    # The root sees metadata only: its first prompt does not grow with the corpus.
    big_tokens, small_tokens = _first_root_prompt_tokens(big), _first_root_prompt_tokens(small)
    assert abs(big_tokens - small_tokens) <= 40 and big_tokens < 3000
    assert all(c["prompt_tokens"] < 20_000 for c in big.calls)
    assert any(c["kind"] == "sub" for c in big.calls)


def _py_modules(root: Path) -> dict[str, ast.AST]:
    trees = {}
    for path in sorted(root.rglob("*.py")):
        try:
            trees[path.relative_to(root).as_posix()] = ast.parse(path.read_text("utf-8"))
        except (SyntaxError, ValueError, UnicodeDecodeError):
            continue
    return trees


def _count_params(tree: ast.AST, name: str) -> int:
    count = 0
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            params = a.posonlyargs + a.args + a.kwonlyargs + [p for p in (a.vararg, a.kwarg) if p]
            count += any(p.arg == name for p in params)
    return count


@pytest.mark.timeout(300)
def test_codebase_question_with_an_exact_ast_answer(ray_session, policy_sim, subset_corpus,
                                                    stdlib_subset):
    trees = _py_modules(stdlib_subset)
    truth = sum(any(isinstance(n, ast.ClassDef) and n.name.endswith("Error") for n in ast.walk(t))
                for t in trees.values())
    result = RLM(POLICY, api_base=policy_sim.base_url).answer(
        subset_corpus, "How many modules define a class whose name ends in 'Error'?")
    assert (result.status, result.answer) == ("ok", str(truth))
    code = "\n".join(s["code"] for s in result.steps)
    assert "candidate_paths(" in code or "context.grep" in code or "context.sql" in code
    assert sum(c["kind"] == "sub" for c in result.calls) >= 1


def _records(n: int, seed: int = 7) -> tuple[str, Counter]:
    rng = random.Random(seed)
    labels = ["spam", "ham", "urgent", "billing", "other"]
    lines, counts = [], Counter()
    for i in range(n):
        label = rng.choice(labels)
        counts[label] += 1
        filler = " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "omega"]) for _ in range(8))
        lines.append(f"record {i} | user u{rng.randrange(400)} | label: {label} | {filler}")
    return "\n".join(lines), counts


@pytest.mark.timeout(300)
def test_map_reduce_fans_out_concurrently(ray_session, sim):
    latency_s = 1.0   # long enough that a loaded machine still has the wave out at once
    server = sim(latency_ms=int(latency_s * 1000))
    text, counts = _records(24_000)
    result = RLM(POLICY, api_base=server.base_url).answer(
        text, "How many records are labelled 'urgent'?")
    assert (result.status, result.answer) == ("ok", str(counts["urgent"]))
    subs = [c for c in result.calls if c["kind"] == "sub"]
    assert len(subs) >= 200
    stats = server.stats()
    assert stats["max_concurrency"] > 64
    # The map step's wall is a few waves of latency, nowhere near the serial sum.
    map_step = max(result.steps, key=lambda s: s["elapsed_s"])
    assert map_step["elapsed_s"] < len(subs) * latency_s / 4


@pytest.mark.timeout(300)
def test_depth_two_tree_of_child_rlms(ray_session, policy_sim, subset_corpus, stdlib_subset):
    trees = _py_modules(stdlib_subset)
    paths = ["json/decoder.py", "textwrap.py", "fractions.py"]
    question = f"For each of the paths {', '.join(paths)}: how many functions take a parameter named self?"
    result = RLM(POLICY, api_base=policy_sim.base_url, max_depth=2).answer(subset_corpus, question)
    expected = ", ".join(f"{p}={_count_params(trees[p], 'self')}" for p in paths)
    assert (result.status, result.answer) == ("ok", expected)
    by_id = {c["call_id"]: c for c in result.calls}
    top_roots = [c for c in result.calls if c["kind"] == "root" and c["parent_call_id"] is None]
    children = [c for c in result.calls if c["kind"] == "rlm"]
    assert len(children) == len(paths) and result.max_depth_reached == 2
    assert all(c["depth"] == 0 for c in top_roots)
    for child in children:
        assert by_id[child["parent_call_id"]]["kind"] == "root" and child["depth"] == 1
        turns = [c for c in result.calls if c["parent_call_id"] == child["call_id"]]
        assert turns and all(t["kind"] == "root" and t["depth"] == 1 for t in turns)
        subs = [c for c in result.calls if c["parent_call_id"] in {t["call_id"] for t in turns}]
        assert subs and all(s["kind"] == "sub" and s["depth"] == 2 for s in subs)
        assert child["prompt_tokens"] == sum(c["prompt_tokens"] for c in turns + subs)
    step_calls = {s["call_id"] for s in result.steps}
    assert step_calls <= {c["call_id"] for c in result.calls if c["kind"] == "root"}


@pytest.mark.timeout(120)
def test_depth_cannot_be_raised_from_the_repl(ray_session, policy_sim, subset_corpus):
    # At max_depth=1 a delegating root gets plain sub-model answers, never child RLMs.
    result = RLM(POLICY, api_base=policy_sim.base_url, max_depth=1).answer(
        subset_corpus, "For each of the paths textwrap.py: how many functions take a parameter "
                       "named self?")
    assert result.status == "ok"
    assert not [c for c in result.calls if c["kind"] == "rlm"]
    assert result.max_depth_reached == 1


@pytest.mark.timeout(120)
def test_policy_recovers_from_its_typo(ray_session, policy_sim):
    result = RLM(POLICY, api_base=policy_sim.base_url).answer(
        "unused", "Recover from a typo: what is 6 times 7?")
    assert (result.status, result.answer) == ("ok", "42")
    assert "NameError" in result.steps[0]["error"]


@pytest.mark.timeout(300)
def test_needle_over_a_corpus_on_s3(ray_session, policy_sim, s3_bucket, tmp_path, stdlib_dir):
    """The corpus on object storage (moto over HTTP): the actor reads it through
    DuckDB httpfs; no credential reaches the records."""
    from rlm_ray.corpus import Corpus, ingest

    uri = f"s3://{s3_bucket}/corpora/needle"
    ingest([str(stdlib_dir / "json"), str(_needle_dir(tmp_path))], uri)
    result = RLM(POLICY, api_base=policy_sim.base_url).answer(Corpus.open(uri), NEEDLE_QUESTION)
    assert (result.status, result.answer) == ("ok", NEEDLE_VALUE)
    assert "AWS_" not in str(result.steps) and "AWS_" not in str(result.calls)
