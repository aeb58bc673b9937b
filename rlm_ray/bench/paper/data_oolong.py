"""OOLONG (`oolongbench/oolong-synth`) and OOLONG-Pairs (`mit-oasys/oolong-pairs`).

oolong-synth ships Parquet shards (`data/validation-*`, `data/test-*`) with
columns id (int64), context_len (int64), dataset, context_window_text,
context_window_text_with_labels, question, task_group, task, answer,
answer_type, input_subset (strings), num_labels, context_window_id (int64).
The paper's OOLONG is `dataset == "trec_coarse"` at 131K-token windows; the
model gets `context_window_text` as its `str` context and the question.

OOLONG-Pairs ships `data/oolong-pairs-<N>.json`: a JSON list of the 20 tasks
{id, question, answer (a list of "(a, b)" strings), type} asked over the
trec_coarse window of N tokens, which the file does not carry: pass the
oolong-synth shard(s) too, and the first trec_coarse window of that length
(validation split first, lowest context_window_id) is the context, as public
OOLONG-Pairs harnesses take it. The paper's OOLONG-Pairs runs at 32K.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from rlm_ray.bench.paper import scoring
from rlm_ray.bench.paper.registry import LoadOptions, dataset
from rlm_ray.bench.paper.tasks import Task, iter_files, read_rows, require_columns, sample
from rlm_ray.errors import UserError

SYNTH_COLUMNS = ("id", "context_len", "dataset", "context_window_text", "question",
                 "answer", "answer_type", "context_window_id")
PAIRS_COLUMNS = ("id", "question", "answer", "type")
SPLIT = "trec_coarse"
_PAIRS_FILE = re.compile(r"oolong-pairs-(\d+)\.json$")


def _synth_rows(files: list[Path], context_len: int) -> list[dict]:
    """trec_coarse rows of one window length from the given oolong-synth shards."""
    rows: list[dict] = []
    shards = sorted(iter_files(files, (".parquet", ".jsonl")),
                    key=lambda p: (0 if "validation" in p.name else 1, str(p)))
    if not shards:
        raise UserError("OOLONG: no oolong-synth Parquet shard among --data "
                        "(data/validation-*.parquet or data/test-*.parquet)")
    lengths: set[tuple[str, int]] = set()
    small = [c for c in SYNTH_COLUMNS if c != "context_window_text"]
    for shard in shards:
        index = read_rows(shard, small)     # no window text: cheap on a multi-GB shard
        require_columns(index, tuple(small), str(shard))
        lengths |= {(str(r["dataset"]), int(r["context_len"])) for r in index}
        if (SPLIT, context_len) in lengths:
            part = read_rows(shard, list(SYNTH_COLUMNS),
                             where={"dataset": SPLIT, "context_len": context_len})
            require_columns(part, SYNTH_COLUMNS, str(shard))
            rows += part
    if not rows:
        have = sorted(n for d, n in lengths if d == SPLIT)
        raise UserError(f"OOLONG: no {SPLIT} rows with context_len {context_len} in --data "
                        f"(its {SPLIT} lengths: {', '.join(map(str, have)) or 'none'}); "
                        "choose one with --context-len")
    return rows


def _score_oolong(task: Task, answer: str | None) -> scoring.Scored:
    return scoring.score_oolong(answer, task.expected, task.meta["answer_type"])


@dataset("oolong", title="OOLONG (trec_coarse)", source="oolongbench/oolong-synth",
         score=_score_oolong, default_context_len=131072)
def load_oolong(files: list[Path], opts: LoadOptions) -> list[Task]:
    rows = _synth_rows(files, opts.context_len or 131072)
    rows.sort(key=lambda r: int(r["id"]))
    return [Task(query_id=f"oolong-{r['id']}", question=str(r["question"]),
                 expected=str(r["answer"]), context_text=str(r["context_window_text"]),
                 meta={"answer_type": str(r["answer_type"]),
                       "context_window_id": int(r["context_window_id"])})
            for r in sample(rows, opts.limit, opts.seed)]


def _pairs_file(files: list[Path], context_len: int) -> Path:
    candidates = list(iter_files(files, (".json",)))
    named = {int(m.group(1)): f for f in candidates if (m := _PAIRS_FILE.search(f.name))}
    if context_len in named:
        return named[context_len]
    if len(candidates) == 1 and not named:
        return candidates[0]
    raise UserError(f"OOLONG-Pairs: no oolong-pairs-{context_len}.json among --data "
                    f"(found lengths: {', '.join(map(str, sorted(named))) or 'none'})")


def _score_pairs(task: Task, answer: str | None) -> scoring.Scored:
    return scoring.score_pairs(answer, task.meta["gold_pairs"])


@dataset("oolong-pairs", title="OOLONG-Pairs", score=_score_pairs, default_context_len=32768,
         source="mit-oasys/oolong-pairs (+ its oolongbench/oolong-synth window)")
def load_pairs(files: list[Path], opts: LoadOptions) -> list[Task]:
    context_len = opts.context_len or 32768
    path = _pairs_file(files, context_len)
    tasks = read_rows(path)
    require_columns(tasks, PAIRS_COLUMNS, str(path))
    for t in tasks:
        if not isinstance(t["answer"], list):
            raise UserError(f"{path}: task {t['id']}: answer must be a list of pairs")
    window = min(_synth_rows(files, context_len), key=lambda r: int(r["context_window_id"]))
    context = str(window["context_window_text"])
    tasks.sort(key=lambda t: int(t["id"]) if str(t["id"]).isdigit() else str(t["id"]))
    return [Task(query_id=f"pairs-{context_len}-{t['id']}", question=str(t["question"]),
                 expected=json.dumps(t["answer"]), context_text=context,
                 meta={"gold_pairs": [str(p) for p in t["answer"]], "type": str(t["type"])})
            for t in sample(tasks, opts.limit, opts.seed)]
