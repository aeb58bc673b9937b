"""Question grids (`--for-each`): expansion and ids checked against values
computed independently from the files on disk; resume per cell and pipelines
that rerun only the cells whose documents changed, end to end on real Ray,
the real engine and the provider SIMULATOR over HTTP."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from rlm_ray.batch.grid import build_grid, expand_scopes
from rlm_ray.batch.queries import Query, load_queries
from rlm_ray.batch.tables import read_run
from rlm_ray.cli import main as cli_main
from rlm_ray.corpus.scopes import doc_index, glob_regex, scope_size
from rlm_ray.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SIM_MODEL = "openai/sim/rlm-policy"
PACKAGES = ("json", "http", "collections")
TEMPLATES = [
    {"query_id": "exceptions", "question": "Does the package {scope_name} define a public class "
                                           "deriving from Exception, and how many?"},
    {"query_id": "modules", "question": "How many modules are under {scope}? Answer like "
                                        "{\"modules\": N}."},
]


def _source(tmp: Path, stdlib_dir: Path) -> Path:
    src = tmp / "src"
    for name in PACKAGES:
        shutil.copytree(stdlib_dir / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(stdlib_dir / "textwrap.py", src / "textwrap.py")   # a document, not a folder
    return src


def _packages_on_disk(src: Path) -> dict[str, list[str]]:
    return {d.name + "/": sorted(str(p.relative_to(src)) for p in d.rglob("*.py"))
            for d in sorted(src.iterdir()) if d.is_dir()}


@pytest.fixture(scope="module")
def grid_corpus(tmp_path_factory, stdlib_dir) -> tuple[Path, str]:
    from rlm_ray.corpus import ingest

    tmp = tmp_path_factory.mktemp("grid")
    src = _source(tmp, stdlib_dir)
    ingest([str(src)], str(tmp / "corpus"))
    return src, str(tmp / "corpus")


def _templates(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_globs_follow_path_segments():
    cases = {  # glob -> (matches, does not match)
        "repos/*/": (["repos/a/x.py", "repos/a/b/c.py"], ["repos/x.py", "other/a/x.py"]),
        "*.py": (["top.py"], ["a/top.py"]),
        "**/*.py": (["a/b/c.py"], ["top.md"]),
        "docs/[ab]?.md": (["docs/a1.md", "docs/bz.md"], ["docs/c1.md", "docs/a/1.md"]),
    }
    for glob, (yes, no) in cases.items():
        pattern = re.compile(glob_regex(glob))
        assert all(pattern.match(p) for p in yes), glob
        assert not any(pattern.match(p) for p in no), glob


def test_expansion_matches_the_folders_and_files_on_disk(grid_corpus):
    src, corpus = grid_corpus
    index = doc_index(corpus)
    on_disk = _packages_on_disk(src)
    scopes, _ = expand_scopes(index, "*/")
    assert scopes.column("label").to_pylist() == sorted(on_disk)
    assert scopes.column("documents").to_pylist() == [len(on_disk[p]) for p in sorted(on_disk)]
    tokens = {r["path"]: r["n_tokens"] for r in index.to_pylist()}
    assert scopes.column("tokens").to_pylist() == [sum(tokens[f] for f in on_disk[p])
                                                   for p in sorted(on_disk)]
    # A scope's digest is the same whichever way it is computed, and differs per scope.
    for row in scopes.to_pylist():
        assert scope_size(index, (row["label"],)).sha256 == row["sha256"]
    assert len(set(scopes.column("sha256").to_pylist())) == len(on_disk)
    # Nested folders (one level under http is none; under collections none either) and documents.
    nested = expand_scopes(index, "**/")[0].column("label").to_pylist()
    assert nested == sorted({str(Path(f).parent) + "/" for fs in on_disk.values() for f in fs}
                            | set(on_disk))
    docs = expand_scopes(index, "json/*.py")[0].column("label").to_pylist()
    assert docs == sorted(f for f in on_disk["json/"] if f.count("/") == 1)


def test_cells_ids_placeholders_and_order(grid_corpus):
    src, corpus = grid_corpus
    templates = [Query("a", "In {scope} ({scope_name}): {unknown} {} {{scope}}?"), Query("b", "Q")]
    grid = build_grid(doc_index(corpus), templates, "*/")
    folders = sorted(_packages_on_disk(src))
    assert grid.cells.column("query_id").to_pylist() == [f"{t}@{f}" for f in folders
                                                          for t in ("a", "b")]
    cells = grid.queries()
    first = cells[0]
    name = folders[0].rstrip("/")
    assert first.question == f"In {folders[0]} ({name}): {{unknown}} {{}} {{{folders[0]}}}?"
    assert (first.template_id, first.scope) == ("a", (folders[0],))
    assert cells[1].question == "Q" and cells[1].scope_sha256 == first.scope_sha256
    # Ids are deterministic: the same grid planned again is the same cells.
    again = build_grid(doc_index(corpus), templates, "*/")
    assert again.cells.equals(grid.cells)


def test_bad_grids_are_one_line_errors(grid_corpus, tmp_path, capsys):
    _, corpus = grid_corpus
    base = ["run", corpus, "--out", str(tmp_path / "o"), "--model", SIM_MODEL,
            "--api-base", "http://127.0.0.1:9/v1", "--dry-run"]
    good = _templates(tmp_path / "t.jsonl", TEMPLATES)
    assert cli_main(base + ["--queries", good, "--for-each", "nowhere/*/"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--for-each 'nowhere/*/' matches no folder of the corpus" in err
    at = _templates(tmp_path / "at.jsonl", [{"query_id": "a@b", "question": "q"}])
    assert cli_main(base + ["--queries", at, "--for-each", "*/"]) == 2
    assert "may not contain '@'" in capsys.readouterr().err
    scoped = _templates(tmp_path / "s.jsonl", [{"query_id": "a", "question": "q",
                                                "scope": ["json/"]}])
    assert cli_main(base + ["--queries", scoped, "--for-each", "*/"]) == 2
    assert "scope comes from the grid" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_dry_run_shows_the_grid_and_its_cost(grid_corpus, tmp_path, capsys):
    src, corpus = grid_corpus
    queries = _templates(tmp_path / "t.jsonl", TEMPLATES)
    assert cli_main(["run", corpus, "--queries", queries, "--for-each", "*/", "--out",
                     str(tmp_path / "o"), "--model", "gpt-4o-mini", "--dry-run",
                     "--calls-per-question", "3"]) == 0
    plan = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines()[1:])
    cells = len(TEMPLATES) * len(_packages_on_disk(src))
    assert int(plan["grid_cells"]) == cells == int(plan["questions_to_run"])
    assert int(plan["grid_scopes"]) == len(PACKAGES)
    assert int(plan["expected_calls"]) == 3 * cells
    assert float(plan["estimated_cost_usd"]) > 0
    assert not (tmp_path / "o").exists()


def test_scope_column_forms_and_conflicts(tmp_path):
    rows = [{"query_id": "a", "question": "q", "scope": ["x/", "y/*.py"]},
            {"query_id": "b", "question": "q", "scope": "z/**"},
            {"query_id": "c", "question": "q"}]
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parquet = tmp_path / "q.parquet"
    pq.write_table(pa.table({"query_id": ["a", "b", "c"], "question": ["q"] * 3,
                             "scope": [["x/", "y/*.py"], ["z/**"], None]}), parquet)
    for path in (jsonl, parquet):
        got = [q.scope for q in load_queries(str(path)).queries]
        assert got == [("x/", "y/*.py"), ("z/**",), None]
    both = tmp_path / "both.jsonl"
    both.write_text(json.dumps({"query_id": "a", "question": "q", "scope": "x/",
                                "context": "text"}) + "\n")
    with pytest.raises(UserError, match="own context"):
        load_queries(str(both))


def test_the_scope_and_its_size_reach_the_first_user_message(grid_corpus):
    from types import SimpleNamespace

    from rlm_ray.corpus import Corpus
    from rlm_ray.engine.run import describe
    from rlm_ray.engine.spec import EngineSettings, RunSpec
    from rlm_ray.llm.config import GatewayConfig

    src, corpus_uri = grid_corpus
    corpus = Corpus.open(corpus_uri)
    budget = SimpleNamespace(remaining_s=lambda: 120.0)
    spec = SimpleNamespace(scope=("http/",), settings=EngineSettings(), budget=budget)
    _, metadata, view = describe(corpus, spec)
    try:
        files = _packages_on_disk(src)["http/"]
        tokens = sum(r["n_tokens"] for r in doc_index(corpus_uri).to_pylist()
                     if r["path"] in files)
        lines = metadata.splitlines()
        assert lines[1].startswith("scope: http/ ")
        assert f"documents: {len(files)}" in lines and f"tokens: {tokens}" in lines
    finally:
        corpus.close()   # stops its query workers
    child = RunSpec(model="m", sub_model="m", gateway=GatewayConfig(), budget=None,
                    scope=("http/",)).child("c1")
    assert child.scope == ("http/",)   # a sub-RLM stays in its parent's scope


@pytest.mark.timeout(900)
def test_a_grid_resumes_per_cell_and_an_empty_scope_is_a_row_error(ray_session, sim,
                                                                   grid_corpus, tmp_path,
                                                                   capsys):
    src, corpus = grid_corpus
    server = sim()
    out = tmp_path / "out"
    base = ["run", corpus, "--for-each", "*/", "--out", str(out), "--model", SIM_MODEL,
            "--api-base", server.base_url, "--concurrency", "3", "--no-progress"]
    assert cli_main(base + ["--queries", _templates(tmp_path / "one.jsonl", TEMPLATES[:1])]) == 0
    first = read_run(str(out), with_details=False).answers
    folders = sorted(_packages_on_disk(src))
    assert first.column("query_id").to_pylist() == sorted(f"exceptions@{f}" for f in folders)
    assert set(first.column("status").to_pylist()) == {"ok"}
    assert first.column("scope").to_pylist() == [[f] for f in sorted(folders)]
    calls = server.stats()["requests"]
    assert calls > 0
    # The plan of the grid with a second template knows which cells are finished.
    two = _templates(tmp_path / "two.jsonl", TEMPLATES)
    capsys.readouterr()
    assert cli_main(base + ["--queries", two, "--dry-run"]) == 0
    plan = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines()[1:])
    assert int(plan["grid_cells"]) == 2 * len(folders)
    assert int(plan["already_finished"]) == int(plan["questions_to_run"]) == len(folders)

    # A second template joins the grid: only its cells run, the finished ones stay as they were.
    assert cli_main(base + ["--queries", two]) == 0
    both = read_run(str(out), with_details=False).answers
    assert both.num_rows == 2 * len(folders)
    assert set(both.column("template_id").to_pylist()) == {"exceptions", "modules"}
    kept = both.filter(pa.compute.equal(both["template_id"], "exceptions"))
    assert kept.column("finished_at").equals(first.column("finished_at"))
    after_two = server.stats()["requests"]
    assert after_two > calls
    # The same grid again: every cell is finished, no model is called.
    assert cli_main(base + ["--queries", str(tmp_path / "two.jsonl")]) == 0
    assert server.stats()["requests"] == after_two

    # A row whose scope covers nothing ends as that row's error, without a model call.
    rows = [{"query_id": "empty", "question": "q", "scope": ["nowhere/**"]},
            {"query_id": "json", "question": "Which module of json defines JSONDecodeError?",
             "scope": "json/"}]
    scoped = _templates(tmp_path / "scoped.jsonl", rows)
    assert cli_main(["run", corpus, "--queries", scoped, "--out", str(tmp_path / "s"),
                     "--model", SIM_MODEL, "--api-base", server.base_url, "--no-progress"]) == 0
    answers = {r["query_id"]: r for r in read_run(str(tmp_path / "s")).answers.to_pylist()}
    assert answers["empty"]["status"] == "error" and answers["empty"]["llm_calls"] == 0
    assert "scope nowhere/** matches no document" in answers["empty"]["error"]
    assert answers["json"]["status"] == "ok" and answers["json"]["scope"] == ["json/"]
    index = doc_index(corpus)
    assert answers["json"]["scope_sha256"] == scope_size(index, ("json/",)).sha256


def _pipeline_job():
    spec = importlib.util.spec_from_file_location("job_pipeline", ROOT / "jobs" / "pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(900)
def test_a_nightly_grid_reruns_only_the_cells_whose_documents_changed(ray_session, sim,
                                                                      stdlib_dir, tmp_path):
    pipeline = _pipeline_job()
    server = sim()
    src = _source(tmp_path, stdlib_dir)
    spec = {"name": "grid", "sources": [str(src)], "corpus": str(tmp_path / "corpus"),
            "output": str(tmp_path / "out"), "model": SIM_MODEL, "api_base": server.base_url,
            "for_each": "*/", "questions": TEMPLATES, "cache": "off",
            "limits": {"concurrency": 3, "max_iterations": 12}}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    cells = {f"{t['query_id']}@{p}/" for t in TEMPLATES for p in PACKAGES}

    assert pipeline.main([str(spec_path), "--date", "2026-03-01"]) == 0
    day1 = read_run(str(tmp_path / "out" / "run_date=2026-03-01")).answers
    assert set(day1.column("query_id").to_pylist()) == cells
    assert set(day1.column("status").to_pylist()) == {"ok"}
    day1_calls = server.stats()["requests"]

    # Touch the files of two packages: only their cells run on the next date.
    for path in ("json/decoder.py", "http/client.py"):
        with open(src / path, "a") as handle:
            handle.write("\n# touched\n")
    assert pipeline.main([str(spec_path), "--date", "2026-03-02"]) == 0
    day2_dir = tmp_path / "out" / "run_date=2026-03-02"
    day2 = read_run(str(day2_dir)).answers
    touched = {c for c in cells if c.split("@")[1] in ("json/", "http/")}
    assert set(day2.column("query_id").to_pylist()) == touched
    assert set(day2.column("status").to_pylist()) == {"ok"}
    info = json.loads((day2_dir / "run.json").read_text())
    assert info["questions_total"] == len(touched) and info["questions_in_spec"] == len(cells)
    # The simulator saw the calls of those cells and no others (no response cache here).
    day2_calls = server.stats()["requests"] - day1_calls
    assert day1_calls == sum(day1.column("llm_calls").to_pylist())
    assert day2_calls == sum(day2.column("llm_calls").to_pylist()) > 0
    old = {r["query_id"]: r["scope_sha256"] for r in day1.to_pylist()}
    assert all(old[r["query_id"]] != r["scope_sha256"] for r in day2.to_pylist())

    # Nothing changed since: the third date answers nothing and calls no model.
    total = server.stats()["requests"]
    assert pipeline.main([str(spec_path), "--date", "2026-03-03"]) == 0
    assert server.stats()["requests"] == total


def test_the_archive_grid_example_spec_expands_over_this_repository():
    from rlm_ray.batch.pipeline import load_spec

    spec = load_spec(str(ROOT / "jobs" / "specs" / "archive-grid.yaml"))
    assert spec.for_each and spec.rerun == "changed" and spec.model == "sim"
    paths = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "rlm_ray").rglob("*.py")
                   if "__pycache__" not in p.parts)
    index = pa.table({"path": paths, "n_tokens": pa.array([1] * len(paths), pa.int64()),
                      "sha256": [""] * len(paths)})
    templates = [Query(q["query_id"], q["question"]) for q in spec.questions]
    grid = build_grid(index, templates, spec.for_each)
    packages = sorted({p.split("/")[1] + "/" for p in paths if p.count("/") >= 2})
    assert grid.size == len(packages) * len(templates) > len(templates)
    assert all("{scope" not in q.question for q in grid.queries())


@pytest.mark.timeout(900)
def test_bench_grid_prints_planning_and_run_figures(ray_session, tmp_path, capsys):
    assert cli_main(["bench", "grid", "--plan-cells", "2000", "--templates", "2",
                     "--run-cells", "4", "--concurrency", "2", "--latency-ms", "0",
                     "--workdir", str(tmp_path)]) == 0
    lines = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1)
                 for line in capsys.readouterr().out.splitlines()[1:])
    assert lines["2,000-cell grid: cells (scopes x templates)"] == "2,000 (1,000 x 2)"
    assert lines["2,000-cell grid: cells to run after resume check"] == "1,000"
    assert float(lines["2,000-cell grid: planning time"].split()[0]) > 0
    assert int(lines["2,000-cell grid: driver peak RSS"].split()[0]) > 0
    assert lines["run: rows written (ok)"] == "4 (4)"
    assert float(lines["run: rows/s written"]) > 0
