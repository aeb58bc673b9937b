"""The paper's methods, each producing one `Answered` per task.

- `rlm` / `rlm-no-sub`: the tasks become a queries file and go through the
  batch layer (`rlm_ray.batch.runner.run`, what `rlm-ray run` calls), so
  resume, budgets, the response cache and the answers/calls/steps tables
  apply. `str` contexts go in one batch, each row naming its text in the
  queries file's `context_file` column; a task with documents is ingested as its own corpus and answered
  in its own batch folder, `--concurrency` such batches at a time.
  `rlm-no-sub` sets max_sub_calls to 0 and tells the root model that it has
  no sub-model (the paper's "RLM with REPL, no sub-calls").
- `base`: one direct call per task through the model gateway, the context
  cut to fit the model's input window (the paper's base-model rows).
"""
from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rlm_ray.bench.paper.tasks import Task

OUTPUT_RESERVE_TOKENS = 8192       # room left for the base model's reply
DEFAULT_WINDOW_TOKENS = 128_000    # when litellm's table does not know the model


@dataclass
class Answered:
    query_id: str
    answer: str | None
    status: str
    cost_usd: float | None
    llm_calls: int
    wall_s: float
    input_tokens: int
    output_tokens: int
    error: str | None = None
    truncated: bool = False        # base: the context was cut to the window


@dataclass(frozen=True)
class MethodRun:
    out: Path
    rlm: dict                      # batch settings (rlm_settings), gateway included
    concurrency: int
    log: Callable[[str], None]


NO_SUB_PROMPT = """\
You answer a question about a context that is too large to read directly. The context lives
in a Python REPL as the variable `context`; you see only its metadata. Write Python code in
```repl``` fenced blocks; each block runs in a persistent sandboxed REPL (variables survive
between blocks) and you see a view of what it printed (about {view_chars} characters per
block, {turn_view_chars} per reply).

{context_api}

There is no sub-model here: llm_query, llm_query_batched, rlm_query and rlm_query_batched
are unavailable. Work with code alone: search, slice, parse and count. SHOW_VARS() lists
your variables; print(...) is the only way to see results.

How to finish: FINAL_VAR(name) on its own line returns a variable once the reply's code has
run; FINAL(value) returns a value. The answer should be exactly what was asked.

1. {explore}
2. Narrow down with code, compute the answer in code, verify it, then finish.
You have at most {max_iterations} replies."""


# -- rlm / rlm-no-sub -------------------------------------------------------
def _context_file(task: Task, folder: Path) -> str:
    """The task's text in a file named by its digest: a window shared by many
    questions (OOLONG-Pairs) is written once, and the queries file stays small."""
    data = (task.context_text or "").encode("utf-8")
    path = folder / f"{hashlib.sha256(data).hexdigest()[:24]}.txt"
    if not path.exists() or path.stat().st_size != len(data):
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return str(path.resolve())


def _write_queries(path: Path, tasks: list[Task], with_context: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"query_id": [t.query_id for t in tasks], "question": [t.question for t in tasks],
               "answer": [t.expected for t in tasks]}
    if with_context:
        columns["context_file"] = [_context_file(t, path.parent / "contexts") for t in tasks]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.table(columns), tmp)
    tmp.replace(path)


def _corpus_for(task: Task, folder: Path, log: Callable[[str], None]) -> Path:
    """The task's documents as a corpus, ingested once (reused while they are unchanged)."""
    from rlm_ray.corpus import ingest

    docs = folder / "docs.jsonl"
    body = "".join(json.dumps({"path": p, "text": t}) + "\n" for p, t in task.documents)
    digest = hashlib.sha256(body.encode()).hexdigest()
    corpus, stamp = folder / "corpus", folder / "ingested.sha256"
    if stamp.exists() and stamp.read_text() == digest and (corpus / "manifest.json").exists():
        return corpus
    folder.mkdir(parents=True, exist_ok=True)
    docs.write_text(body, encoding="utf-8")
    log(f"  ingesting {len(task.documents)} documents for {task.query_id}")
    ingest([str(docs)], str(corpus), name=task.query_id)
    stamp.write_text(digest)
    return corpus


def _answers(run_dir: Path) -> list[Answered]:
    from rlm_ray.batch.tables import read_run

    return [Answered(a["query_id"], a["answer"], a["status"], a["cost_usd"],
                     int(a["llm_calls"] or 0), float(a["wall_s"] or 0.0),
                     int(a["input_tokens"] or 0), int(a["output_tokens"] or 0), a["error"])
            for a in read_run(str(run_dir), with_details=False).answers.to_pylist()]


def run_rlm(tasks: list[Task], run: MethodRun, rlm: dict | None = None) -> list[Answered]:
    from rlm_ray.batch.pool import HostPool
    from rlm_ray.batch.runner import run as run_batch

    rlm = rlm or run.rlm
    answered: list[Answered] = []
    text = [t for t in tasks if t.kind == "text"]
    corpora = [t for t in tasks if t.kind == "corpus"]
    if text:
        hosts = HostPool(concurrency=run.concurrency)
        try:
            queries = run.out / "work" / "queries-text.parquet"
            _write_queries(queries, text, with_context=True)
            run_dir = run.out / "runs" / "text"
            run.log(f"  {len(text)} questions with text contexts -> {run_dir}")
            run_batch(None, str(queries), str(run_dir), rlm=rlm, concurrency=run.concurrency,
                      progress=False, hosts=hosts)
            answered += _answers(run_dir)
        finally:
            hosts.shutdown()
    if corpora:
        answered += _corpus_batches(corpora, run, rlm)
    return answered


def _corpus_batches(corpora: list[Task], run: MethodRun, rlm: dict) -> list[Answered]:
    """One batch per task (each over its own corpus), `concurrency` batches at a time:
    each worker thread owns one RLM host and takes the next task when its batch ends."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from rlm_ray.batch.pool import HostPool
    from rlm_ray.batch.runner import run as run_batch

    pending = deque(corpora)
    lock = threading.Lock()
    stop = threading.Event()
    run.log(f"  {len(corpora)} questions, each over its own corpus -> {run.out / 'runs'}")

    def worker() -> list[Answered]:
        done: list[Answered] = []
        hosts = HostPool(hosts=1, concurrency=1)
        try:
            while not stop.is_set():
                with lock:
                    task = pending.popleft() if pending else None
                if task is None:
                    return done
                folder = run.out / "work" / "corpora" / task.query_id
                corpus = _corpus_for(task, folder, run.log)
                queries = folder / "queries.parquet"
                _write_queries(queries, [task], with_context=False)
                run_dir = run.out / "runs" / task.query_id
                run_batch(str(corpus), str(queries), str(run_dir), rlm=rlm, concurrency=1,
                          progress=False, hosts=hosts)
                done += _answers(run_dir)
            return done
        finally:
            hosts.shutdown()

    workers = min(run.concurrency, len(corpora))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="paper-batch") as pool:
        futures = [pool.submit(worker) for _ in range(workers)]
        try:
            results = [f.result() for f in futures]
        except BaseException:
            stop.set()   # the others finish their current question and stop
            raise
    order = {t.query_id: i for i, t in enumerate(corpora)}
    return sorted((a for part in results for a in part), key=lambda a: order.get(a.query_id, 0))


def run_rlm_no_sub(tasks: list[Task], run: MethodRun) -> list[Answered]:
    return run_rlm(tasks, run, {**run.rlm, "max_sub_calls": 0, "system_prompt": NO_SUB_PROMPT})


# -- base ---------------------------------------------------------------------
def base_prompt(task: Task, window_tokens: int) -> tuple[str, bool]:
    """Context (cut to what fits the window) then the question, as one user message."""
    from rlm_ray.tokens import count_tokens, encoder

    tail = f"\n\n{task.question}"
    budget = max(0, window_tokens - OUTPUT_RESERVE_TOKENS - count_tokens(tail) - 16)
    context = task.base_context()
    # Only a prefix can fit: tokenising 10 characters per allowed token is plenty
    # (English averages ~4) and spares encoding a 40 MB BrowseComp-Plus context.
    prefix = context[:budget * 10]
    tokens = encoder().encode_ordinary(prefix)
    if len(tokens) <= budget and len(prefix) == len(context):
        return context + tail, False
    return encoder().decode(tokens[:budget]) + tail, True


def base_window(rlm: dict) -> int:
    from rlm_ray import llm

    return llm.context_window(rlm["model"], rlm["gateway"]) or DEFAULT_WINDOW_TOKENS


def run_base(tasks: list[Task], run: MethodRun) -> list[Answered]:
    from rlm_ray import llm
    from rlm_ray.llm.types import Completion

    window = base_window(run.rlm)
    prompts = [base_prompt(t, window) for t in tasks]
    cut = sum(1 for _, truncated in prompts if truncated)
    run.log(f"  {len(tasks)} direct calls to {run.rlm['model']} (window {window:,} tokens; "
            f"{cut} context(s) cut to fit)")
    requests = [{"messages": [{"role": "user", "content": p}]} for p, _ in prompts]
    outcomes = llm.complete_many(requests, model=run.rlm["model"], config=run.rlm["gateway"])
    answered = []
    for task, (_, truncated), outcome in zip(tasks, prompts, outcomes):
        if isinstance(outcome, Completion):
            answered.append(Answered(task.query_id, outcome.text, "ok", outcome.cost_usd, 1,
                                     outcome.latency_s, outcome.prompt_tokens,
                                     outcome.completion_tokens, None, truncated))
        else:
            answered.append(Answered(task.query_id, None, "error", None, 1, 0.0, 0, 0,
                                     str(outcome)[:500], truncated))
    return answered


METHODS: dict[str, Callable[[list[Task], MethodRun], list[Answered]]] = {
    "rlm": run_rlm, "rlm-no-sub": run_rlm_no_sub, "base": run_base,
}
