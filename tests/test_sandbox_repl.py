"""The sandbox as a REPL: state, host functions and proxies, values across the
boundary, output limits, timeouts around host calls, many sandboxes at once."""
from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path

import pyarrow as pa
import pytest

from sandbox import RunResult, Sandbox, SandboxError, current_deadline
from sandbox import isolation as isolation_mod
from sandbox.host import RESTART_NOTICE


class FakeCorpus:
    """A host object with the corpus handle's shape; `_conn` stands for the
    credentials a real handle holds and must never reach the sandbox."""
    _conn = "s3-credentials"

    def __init__(self, lines: list[str]):
        self.lines = lines
        self.calls = 0

    @property
    def stats(self) -> dict:
        self.calls += 1
        return {"documents": 1, "lines": len(self.lines)}

    def grep(self, pattern: str, limit: int = 100) -> list[dict]:
        return [{"line": i + 1, "text": t} for i, t in enumerate(self.lines) if pattern in t][:limit]

    def sql(self, query: str) -> pa.Table:
        return pa.table({"n": [1, 2], "path": ["a.py", "b.py"]})

    def read(self, doc: str, start: int = 0, end: int | None = None) -> str:
        if doc != "a.py":
            raise KeyError(f"no document {doc!r}")
        return "\n".join(self.lines[start:end])

    def _private(self) -> str:
        return self._conn

    def __len__(self) -> int:
        return 1234


class BoomError(Exception):
    pass


@pytest.fixture
def corpus() -> FakeCorpus:
    return FakeCorpus(["import os", "def foo(): pass", "foo()"])


@pytest.fixture
def sb(corpus):
    def boom(message: str) -> None:
        raise BoomError(message)

    with Sandbox({"context": corpus, "llm_query": lambda prompt: f"answer to {prompt}",
                  "boom": boom, "bad_value": lambda: ValueError("not data")},
                 timeout_s=20) as sandbox:
        yield sandbox


def ok(result: RunResult) -> str:
    assert result.error is None, result.error
    return result.stdout


def test_state_survives_across_runs(sb):
    ok(sb.run("import collections\nclass Counter2(collections.Counter):\n"
              "    def top(self): return self.most_common(1)[0][0]\n"
              "def words(s): return s.split()\ntotal = 0"))
    ok(sb.run("total += len(words('a b c'))"))
    assert ok(sb.run("print(Counter2(words('x y x')).top(), total, collections.__name__)")) == \
        "x 3 collections\n"


def test_host_function_and_object_proxy(sb, corpus):
    assert ok(sb.run("print(llm_query('hi'))")) == "answer to hi\n"
    out = ok(sb.run("print(len(context), context.stats['lines'], context.grep('foo', limit=1))"))
    assert out == "1234 3 [{'line': 2, 'text': 'def foo(): pass'}]\n"
    assert corpus.calls == 1  # attributes are fetched on access, in the host
    # pyarrow tables come back as rows, never as pickles
    assert ok(sb.run("print(context.sql('select 1'))")) == \
        "[{'n': 1, 'path': 'a.py'}, {'n': 2, 'path': 'b.py'}]\n"
    assert ok(sb.run("print(context.read('a.py', start=1, end=2))")) == "def foo(): pass\n"
    assert "grep" in ok(sb.run("print(dir(context))"))


def test_proxy_exposes_only_the_public_surface(sb):
    for code in ("context._private()", "context._conn", "context.__dict__['_conn']"):
        result = sb.run(code)
        assert result.error is not None and "s3-credentials" not in (result.stdout + result.error)
    assert "AttributeError" in sb.run("context.nothing").error


def test_host_exceptions_surface_inside_the_sandbox(sb):
    result = sb.run("context.read('missing.py')")
    assert result.error.strip().endswith("KeyError: \"no document 'missing.py'\"")
    result = sb.run("try:\n    boom('it broke')\nexcept Exception as e:\n"
                    "    print(type(e).__name__, e)")
    assert ok(result) == "HostError BoomError: it broke\n"
    # no host traceback, no host paths, no sandbox internals
    error = sb.run("boom('x')").error
    assert "test_sandbox_repl.py" not in error and "sandbox/" not in error
    assert '"<repl-' in error


def test_non_json_arguments_and_results(sb):
    result = sb.run("llm_query(object())")
    assert "TypeError: arguments to llm_query must be JSON-serialisable" in result.error
    out = ok(sb.run("print(bad_value())"))
    assert out.startswith("<ValueError value not JSON-serialisable: ValueError('not data')>")


def test_host_functions_see_the_runs_deadline():
    """Host time counts against the run: the host function is told by when to stop."""
    seen = []

    def probe() -> float:
        seen.append(current_deadline() - time.monotonic())
        return 1

    with Sandbox({"probe": probe}, timeout_s=5) as sb:
        assert ok(sb.run("print(probe())")) == "1\n"
    assert current_deadline() is None and len(seen) == 1 and 0 < seen[0] <= 5


def test_get_and_set(sb):
    sb.set("context_meta", {"kind": "corpus", "tokens": 10, "paths": ("a.py", "b.py")})
    assert ok(sb.run("print(context_meta['paths'][1], context_meta['tokens'] + 1)")) == "b.py 11\n"
    ok(sb.run("result = {'answer': [1, 2.5, None, True], 'nested': {'k': 'v'}}"))
    assert sb.get("result") == {"answer": [1, 2.5, None, True], "nested": {"k": "v"}}
    with pytest.raises(SandboxError, match="not a valid variable name"):
        sb.set("not valid", 1)
    with pytest.raises(SandboxError, match=r"value for 'x' is not JSON-serialisable \(type object\)"):
        sb.set("x", object())


def test_threads_work_inside(sb):
    code = ("import threading\nout = []\n"
            "ts = [threading.Thread(target=lambda i=i: out.append(llm_query(str(i)))) for i in range(8)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\nprint(sorted(out))")
    assert ok(sb.run(code)) == str(sorted(f"answer to {i}" for i in range(8))) + "\n"


def test_worker_dying_between_runs_is_reported_by_get_and_next_run(sb):
    ok(sb.run("import os, threading, time\nmine = 1\n"
              "threading.Thread(target=lambda: (time.sleep(0.2), os._exit(5))).start()"))
    time.sleep(1.0)
    with pytest.raises(SandboxError, match=r"'mine' is not defined.*exited with status 5"):
        sb.get("mine")
    after = sb.run("print('fresh')")
    assert after.stdout == RESTART_NOTICE.format(reason="the REPL worker exited with status 5") + "fresh\n"


def test_set_values_are_restored_after_a_restart(sb):
    sb.set("meta", {"n": 1})
    ok(sb.run("mine = 5"))
    assert "SandboxCrash" in sb.run("import os; os._exit(1)").error
    after = sb.run("print(meta, globals().get('mine'))")
    assert after.stdout.startswith(RESTART_NOTICE.split("(")[0])
    assert after.stdout.endswith("{'n': 1} None\n")


def test_output_truncation_marker(corpus):
    with Sandbox(output_limit=50) as sb:
        result = sb.run("for i in range(100): print(i)")
        assert result.truncated
        assert result.stdout.startswith("0\n1\n2\n")
        assert result.stdout.endswith("[output truncated: 240 more characters not shown (limit 50)]\n")
        small = sb.run("print('short')")
        assert small.stdout == "short\n" and not small.truncated


def test_odd_text_crosses_the_boundary(sb):
    assert ok(sb.run("print('caf\\u00e9 \\u6f22\\u5b57 \\U0001F600')")) == "caf\u00e9 \u6f22\u5b57 \U0001F600\n"
    out = ok(sb.run("s = 'a\\ud800b'\nprint(s)"))  # a lone surrogate must not break the pipe
    assert out == "a\ufffdb\n"
    assert sb.get("s") == "a\ud800b"
    ok(sb.run("print('still fine')"))


def test_errors_are_results_not_exceptions(sb):
    result = sb.run("x = \n")
    assert result.error.strip().splitlines()[-1].startswith("SyntaxError")
    assert 'File "<repl-' in result.error
    result = sb.run("print('before')\n1 / 0")
    assert result.stdout == "before\n" and result.error.strip().endswith("ZeroDivisionError: division by zero")


def test_scratch_dir_is_writable_and_given_dir_is_kept(tmp_path):
    scratch = tmp_path / "scratch"
    with Sandbox(scratch_dir=scratch) as sb:
        ok(sb.run("import tempfile, os\nopen('notes.txt', 'w').write('hello')\n"
                  "with tempfile.NamedTemporaryFile(delete=False) as f: f.write(b'tmp')\n"
                  "print(os.path.dirname(f.name) == os.getcwd())"))
        assert (scratch / "notes.txt").read_text() == "hello"
    assert (scratch / "notes.txt").exists()  # a caller's scratch dir is theirs to remove
    with Sandbox(use_bwrap=False) as sb:  # a host folder only without bwrap
        own = Path(sb.scratch_dir)
        assert own.is_dir()
    assert not own.exists()


def test_host_error_messages_are_redacted(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-aws-key")

    def leaky() -> None:
        raise RuntimeError("auth failed for key very-secret-aws-key")

    with Sandbox({"leaky": leaky}) as sb:
        error = sb.run("leaky()").error
    assert "very-secret-aws-key" not in error and "[redacted]" in error


def test_twenty_sandboxes_from_twenty_threads():
    results: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            with Sandbox({"tag": lambda: f"host-{index}"}, timeout_s=60) as sb:
                outputs = []
                for _ in range(5):
                    sb.run(f"acc = globals().get('acc', 0) + {index}")
                    outputs.append(sb.run("print(tag(), acc)").stdout)
                results[index] = outputs
        except BaseException as exc:  # surfaced below, with the index
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors, errors
    for index in range(20):
        assert results[index] == [f"host-{index} {index * (step + 1)}\n" for step in range(5)]


def test_sandbox_outlives_the_thread_that_made_it():
    """Parent-death signals follow the parent THREAD; a Sandbox built in a
    short-lived thread must keep its worker."""
    made: dict[str, Sandbox] = {}

    def make() -> None:
        made["sb"] = Sandbox()
        made["sb"].run("kept = 1")

    maker = threading.Thread(target=make)
    maker.start()
    maker.join()
    time.sleep(0.3)
    with made["sb"] as sb:
        assert ok(sb.run("print(kept)")) == "1\n"  # no restart notice, state intact


def test_one_sandbox_shared_by_threads_serialises(sb):
    ok(sb.run("hits = []"))
    def hammer(n: int) -> None:
        for _ in range(20):
            sb.run(f"hits.append({n})")
    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(sb.get("hits")) == sorted([n for n in range(4) for _ in range(20)])


def test_missing_bwrap_warns_and_still_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap to be found
    isolation_mod.bwrap_status.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with Sandbox() as sb:
                assert sb.isolation["bwrap"] is False and sb.isolation["seccomp"] is True
                assert ok(sb.run("print(6 * 7)")) == "42\n"
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert any("without bwrap" in m and "not installed" in m for m in messages), messages
        with pytest.raises(SandboxError, match="missing: bwrap"):
            Sandbox(require_isolation=True)
    finally:
        isolation_mod.bwrap_status.cache_clear()


def test_closed_sandbox_refuses(sb):
    sb.close()
    with pytest.raises(SandboxError, match="closed"):
        sb.run("1")
