"""Query workers (corpus/query_pool.py, query_worker.py): the processes that
run the model's corpus calls out of the host. Real worker processes over a
real corpus (a stdlib slice, and one on moto S3): the byte cap on replies,
the kill at the deadline when DuckDB does not honour its interrupt, the
kernel memory cap, replacement after a death, and no process left behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from fixtures.codebase import scan_lines, text_files
from rlm_ray.corpus import Corpus, CorpusQueryError, ingest
from rlm_ray.engine.context_view import ContextView

# One function call that computes for tens of seconds: DuckDB checks for an
# interrupt between vectors, never inside it, so only a kill ends it in time.
UNINTERRUPTIBLE = "SELECT levenshtein(repeat('a', 65536), repeat('b', 65536)) AS d"
# Not on the amplifier list: replace() turns 64K characters into 4 G characters.
AMPLIFY = "SELECT length(replace(repeat('x', 32768), 'x', repeat('y', 32768))) AS n"


@pytest.fixture(scope="module")
def corpus_dir(stdlib_subset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qworkers") / "corpus"
    ingest([str(stdlib_subset)], str(out), chunk_tokens=500)
    return out


@pytest.fixture
def fresh(corpus_dir, monkeypatch):
    """Factory: a Corpus handle opened after the given RLM_RAY_* settings, so its
    pool is new; every pool made is closed at teardown."""
    made: list[Corpus] = []

    def open_with(**env: str) -> Corpus:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        corpus = Corpus.open(str(corpus_dir))
        made.append(corpus)
        return corpus

    yield open_with
    for corpus in made:
        corpus.close()


def gone(pid: int) -> bool:
    """No such process, or nothing but a zombie (which would be a leak: checked apart)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def wait_gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.1)
    return False


def test_model_calls_run_in_a_worker_not_in_this_process(fresh, stdlib_subset):
    corpus = fresh()
    view = ContextView(corpus)
    files = text_files(stdlib_subset)
    hits = view.grep(r"class \w+Error\(", limit=None)
    assert {(h["path"], h["line"]) for h in hits} == scan_lines(files, r"class \w+Error\(")
    assert view.read("shlex.py", 3, 9) == "".join(files["shlex.py"].splitlines(True)[3:9])
    assert view.sql("SELECT count(*) AS n FROM docs") == [{"n": len(files)}]
    docs = view.docs()
    assert len(docs) == len(files)
    assert view.doc_texts(0, 2) == [files[docs[0]["path"]], files[docs[1]["path"]]]
    [pid] = corpus.query_pool().worker_pids()
    assert pid != os.getpid()
    assert corpus._con is None           # this process never opened a DuckDB database


def test_replies_are_capped_in_bytes_not_only_rows(fresh):
    corpus = fresh(RLM_RAY_QUERY_RESULT_MB="1")
    view = ContextView(corpus, max_rows=5000)
    total = view.sql("SELECT count(*) AS n, sum(length(text))::BIGINT AS chars FROM chunks")[0]
    assert total["chars"] > 1 << 20         # twice the text is well over the cap
    rows = view.sql("SELECT path, text, text AS again FROM chunks ORDER BY path, chunk_id")
    assert 0 < len(rows) < total["n"]         # under the row cap, cut by bytes
    assert len(json.dumps(rows).encode()) < 2 << 20
    [note] = view.drain_notes()
    assert f"only the first {len(rows)} rows" in note and "1 MB" in note
    # The rows are the query's first ones, whole.
    first = view.sql("SELECT path, text, text AS again FROM chunks ORDER BY path, chunk_id LIMIT 3")
    assert rows[:3] == first
    # A single value over the cap: no rows, and the model is told why.
    assert view.sql("SELECT string_agg(text, '') AS big FROM chunks") == []
    assert "1 MB" in view.drain_notes()[0]
    # Host-side reads that cannot be cut fail clearly instead.
    with pytest.raises(CorpusQueryError, match=r"over the 1 MB one corpus call may return"):
        view._query("SELECT text, text AS again FROM read_parquet(?)",
                    [[str(corpus.uri) + "/" + shard["file"] for shard in corpus.manifest["shards"]]])


def test_a_query_that_ignores_its_interrupt_is_killed_at_the_deadline(fresh):
    corpus = fresh()
    view = ContextView(corpus)
    view.sql("SELECT 1 AS one")
    pool = corpus.query_pool()
    [first] = pool.worker_pids()
    view.set_deadline(time.monotonic() + 3)
    started = time.monotonic()
    with pytest.raises(CorpusQueryError, match=r"exceeded its time limit .*worker process was stopped"):
        view.sql(UNINTERRUPTIBLE)
    elapsed = time.monotonic() - started
    assert elapsed < 3 + 5, elapsed               # the deadline, plus reaping on a shared machine
    assert pool.replaced == 1 and wait_gone(first)
    view.set_deadline(None)
    assert view.sql("SELECT 1 AS one") == [{"one": 1}]     # served by a fresh worker
    assert pool.worker_pids() != [first]


def test_a_runaway_value_costs_its_worker_only(fresh):
    corpus = fresh(RLM_RAY_QUERY_MEMORY_MB="512")
    view = ContextView(corpus)
    view.sql("SELECT 1 AS one")
    pool = corpus.query_pool()
    [first] = pool.worker_pids()
    # DuckDB does not account for that value: the kernel's cap on the worker stops it.
    with pytest.raises(CorpusQueryError, match=r"^query used more than 512 MB of memory and"):
        view.sql(AMPLIFY)
    assert pool.replaced == 1 and wait_gone(first)
    assert view.sql("SELECT count(*) AS n FROM docs")[0]["n"] == corpus.stats["documents"]
    [second] = pool.worker_pids()
    assert second != first
    # A worker that dies while idle (the OOM killer, an operator) is replaced
    # before anyone is handed it: the next call does not see the death.
    os.kill(second, signal.SIGKILL)
    while not gone(second):
        time.sleep(0.05)
    assert view.grep("import", limit=1)
    assert second not in pool.worker_pids()
    assert not Path(f"/proc/{second}").exists()      # reaped, not left a zombie


def test_a_question_waits_its_turn_and_a_killed_worker_is_replaced_for_the_next(fresh):
    """One worker, two questions: the second question's call waits while the
    first's runs, and is served by a fresh worker once that one is killed at
    its deadline; the first question's own second call waits behind its first."""
    corpus = fresh(RLM_RAY_QUERY_WORKERS="1")
    first, second = ContextView(corpus), ContextView(corpus)
    first.sql("SELECT 1 AS one")
    pool = corpus.query_pool()
    errors: list[str] = []

    def slow() -> None:
        first.set_deadline(time.monotonic() + 4)
        try:
            first.sql(UNINTERRUPTIBLE)
        except CorpusQueryError as exc:
            errors.append(str(exc))

    runner = threading.Thread(target=slow)
    runner.start()
    while pool.in_use() == 0 and runner.is_alive():
        time.sleep(0.02)
    with pytest.raises(CorpusQueryError, match="previous corpus call is still running"):
        first._queries.grep("import", 1, True, False, 1.0)     # a 1 s call, spent waiting
    assert second.sql("SELECT 2 AS two") == [{"two": 2}]   # waited, then a fresh worker
    runner.join(timeout=60)
    assert len(errors) == 1 and "time limit" in errors[0]
    assert pool.replaced == 1 and len(pool.worker_pids()) == 1


def test_an_idle_worker_ends_and_the_next_call_starts_one(fresh):
    from rlm_ray.corpus.query_pool import QueryLimits, QueryPool, QuerySession

    corpus = fresh()
    pool = QueryPool(corpus.uri, corpus.manifest, corpus.limits, QueryLimits(idle_s=1.0))
    session = QuerySession(pool)
    try:
        for _ in range(2):
            assert session.table("SELECT 7 AS n", [], 60).to_pylist() == [{"n": 7}]
            [pid] = pool.worker_pids()
            assert wait_gone(pid, timeout=30) and pool.worker_pids() == []
        assert pool.replaced == 0          # retired, not lost
    finally:
        pool.close()


def test_workers_end_with_the_pool_and_with_a_killed_host(fresh, corpus_dir):
    corpus = fresh(RLM_RAY_QUERY_WORKERS="2")
    view_a, view_b = ContextView(corpus), ContextView(corpus)
    threads = [threading.Thread(target=lambda v=v: v.sql("SELECT count(*) FROM chunks"))
               for v in (view_a, view_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pids = corpus.query_pool().worker_pids()
    assert 1 <= len(pids) <= 2
    corpus.close()
    assert all(wait_gone(pid) for pid in pids)
    # A host that is SIGKILLed mid-question: its worker notices and exits (no orphan).
    code = textwrap.dedent(f"""
        import time
        from rlm_ray.corpus import Corpus
        from rlm_ray.engine.context_view import ContextView
        corpus = Corpus.open({str(corpus_dir)!r})
        ContextView(corpus).sql("SELECT 1")
        print(corpus.query_pool().worker_pids()[0], flush=True)
        time.sleep(600)
        """)
    host = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        worker = int(host.stdout.readline())
        assert not gone(worker)
        host.send_signal(signal.SIGKILL)
        host.wait(timeout=30)
        assert wait_gone(worker), "the worker outlived its host"
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()


@pytest.mark.timeout(300)
def test_an_s3_corpus_is_read_by_the_worker(s3_bucket, stdlib_subset):
    uri = f"s3://{s3_bucket}/corpora/subset"
    ingest([str(stdlib_subset / "json")], uri, chunk_tokens=500)
    corpus = Corpus.open(uri)
    try:
        view = ContextView(corpus)
        files = text_files(stdlib_subset / "json")
        assert {(h["path"], h["line"]) for h in view.grep("def ", limit=None)} == \
            scan_lines(files, "def ")
        assert view.read("decoder.py", 0, 4) == "".join(files["decoder.py"].splitlines(True)[:4])
        assert view.sql("SELECT count(*) AS n FROM docs") == [{"n": len(files)}]
        [pid] = corpus.query_pool().worker_pids()
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        # The worker has what S3 needs (the sandbox never does: test_engine_limits).
        assert b"AWS_SECRET_ACCESS_KEY=testing" in environ
    finally:
        corpus.close()
