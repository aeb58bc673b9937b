"""`rlm-ray bench quality`: run a suite, size by size, as real batches.

Per size: generate the case (cached under `<workdir>/cases/`), ingest its
documents as a corpus (cached too: an 8M-token ingest is paid once), run the
questions through `rlm_ray.batch.run` into `RESULTS/runs/size-N/`, then score
the `answers` table per family and read cost, calls and the root prompt size
from the same tables. The summary table, per-question rows and the plot are
written last, each atomically.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from rlm_ray.bench.scoring import score
from rlm_ray.bench.suites import SUITES, Case
from rlm_ray.errors import UserError


@dataclass
class SizeResult:
    suite: str
    size: int
    tokens: int
    documents: int
    questions: int
    accuracy: float             # mean family score (match or F1)
    exact_rate: float
    cost_per_query: float | None
    calls_per_query: float
    wall_per_query_s: float     # mean of the answers' wall_s
    batch_wall_s: float         # the whole batch, as the user waits for it
    root_prompt_tokens: int     # largest first root prompt: constant across sizes if the corpus stays out
    statuses: dict
    ingest_s: float


@dataclass(frozen=True)
class PreparedCase:
    folder: Path
    queries: Path
    corpus: Path
    meta: dict


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prepare(suite: str, seed: int, size: int, workdir: Path,
            log: Callable[[str], None] = print) -> PreparedCase:
    """The case's queries file and ingested corpus, generated once per (suite, seed, size)."""
    folder = workdir / "cases" / f"{suite}-seed{seed}-{size}"
    meta_path = folder / "case.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
    else:
        started = time.monotonic()
        case: Case = SUITES[suite].generate(seed, size)
        docs, _ = case.write(folder)
        meta = {"suite": suite, "seed": seed, "size": size, "tokens": case.tokens,
                "documents": len(case.documents), "questions": len(case.questions),
                "docs_sha256": _digest(docs), "notes": case.notes, "ingest_s": None,
                "generate_s": round(time.monotonic() - started, 2)}
        _write_json(meta_path, meta)   # last: a case without case.json is regenerated
    corpus = folder / "corpus"
    if meta.get("ingested_sha256") != meta["docs_sha256"] or not (corpus / "manifest.json").exists():
        from rlm_ray.corpus import ingest

        log(f"  ingesting {meta['tokens']:,} tokens ({meta['documents']} documents) ...")
        started = time.monotonic()
        ingest([str(folder / "docs.jsonl")], str(corpus), name=folder.name)
        meta.update(ingest_s=round(time.monotonic() - started, 2), ingested_sha256=meta["docs_sha256"])
        _write_json(meta_path, meta)
    return PreparedCase(folder, folder / "queries.jsonl", corpus, meta)


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str))
    tmp.replace(path)


def _families(queries: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in queries.read_text().splitlines() if line.strip()]
    return {r["query_id"]: r["family"] for r in rows}


def score_run(run_dir: str, families: dict[str, str]) -> list[dict]:
    """Per-question rows (answer, expected, score, cost, calls, wall, first root
    prompt's tokens), from the batch's own tables."""
    from rlm_ray.batch.tables import read_run

    tables = read_run(run_dir)
    answers = tables.answers.to_pylist()
    first_root: dict[str, int] = {}
    for call in tables.calls.to_pylist():
        if call["kind"] == "root" and call["depth"] == 0:
            first_root.setdefault(call["query_id"], int(call["prompt_tokens"] or 0))
    rows = []
    for a in answers:
        s = score(families.get(a["query_id"], ""), a["answer"], a["expected"] or "")
        rows.append({"query_id": a["query_id"], "family": families.get(a["query_id"]),
                     "status": a["status"], "answer": a["answer"], "expected": a["expected"],
                     "score": s.score, "exact": s.exact, "cost_usd": a["cost_usd"],
                     "llm_calls": a["llm_calls"], "wall_s": a["wall_s"],
                     "root_prompt_tokens": first_root.get(a["query_id"])})
    return rows


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarise(case: PreparedCase, rows: list[dict], batch_wall_s: float) -> SizeResult:
    costs = [r["cost_usd"] for r in rows]
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return SizeResult(
        suite=case.meta["suite"], size=case.meta["size"], tokens=case.meta["tokens"],
        documents=case.meta["documents"], questions=len(rows),
        accuracy=_mean([r["score"] for r in rows]), exact_rate=_mean([float(r["exact"]) for r in rows]),
        cost_per_query=None if not rows or any(c is None for c in costs) else _mean(costs),
        calls_per_query=_mean([r["llm_calls"] or 0 for r in rows]),
        wall_per_query_s=_mean([r["wall_s"] or 0.0 for r in rows]), batch_wall_s=batch_wall_s,
        root_prompt_tokens=max((r["root_prompt_tokens"] or 0 for r in rows), default=0),
        statuses=statuses, ingest_s=case.meta.get("ingest_s") or 0.0)


def run_quality(suite: str, sizes: list[int], *, seed: int, out: Path, rlm: dict,
                concurrency: int, workdir: Path, progress: bool = False,
                log: Callable[[str], None] = print) -> list[SizeResult]:
    from rlm_ray.batch.runner import run

    if suite not in SUITES:
        raise UserError(f"unknown suite {suite!r}; choose from {', '.join(SUITES)}")
    results: list[SizeResult] = []
    all_rows: list[dict] = []
    if out.exists() and any(out.iterdir()) and not ({"summary.json", "runs"} & {p.name for p in out.iterdir()}):
        raise UserError(f"{out} exists and is not a bench results folder; choose another --out")
    for size in sizes:
        log(f"{suite} size {size:,}: preparing")
        case = prepare(suite, seed, size, workdir, log)
        run_dir = out / "runs" / f"size-{size}"
        if run_dir.exists():
            shutil.rmtree(run_dir)   # a benchmark measures; it never resumes an old run
        log(f"  {case.meta['questions']} questions over {case.meta['tokens']:,} tokens")
        started = time.monotonic()
        run(str(case.corpus), str(case.queries), str(run_dir), rlm=rlm,
            concurrency=concurrency, progress=progress)
        wall = time.monotonic() - started
        rows = score_run(str(run_dir), _families(case.queries))
        for row in rows:
            row.update(suite=suite, size=size)
        result = summarise(case, rows, wall)
        log(f"  accuracy {result.accuracy:.2f}, {result.calls_per_query:.1f} calls/query, "
            f"root prompt {result.root_prompt_tokens} tokens, {wall:.1f}s")
        results.append(result)
        all_rows.extend(rows)
    # Sizes not run this time keep their latest rows, so one failed size can be rerun alone.
    def kept(row: dict) -> bool:
        return row["suite"] == suite and row["size"] not in sizes

    results = sorted([SizeResult(**row) for row in _load(out / "summary.json") if kept(row)] + results,
                     key=lambda r: r.size)
    all_rows = [row for row in _load(out / "per_query.json") if kept(row)] + all_rows
    _write_json(out / "per_query.json", sorted(all_rows, key=lambda row: (row["size"], row["query_id"])))
    _write_json(out / "summary.json", [asdict(r) for r in results])
    return results


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []
