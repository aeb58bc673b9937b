"""Over a corpus, `context` in the REPL is a read-only, lazy sequence of
documents: len = documents, context[i] =
a document's text, lazy slices and batched iteration, a short description,
and errors that name grep/read/sql for what only a str could do.

Everything runs through the real sandbox and the engine's Workspace wiring;
expected values come from the source files (pathlib) and the corpus's own
docs table, never from the sequence code under test.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from rlm_ray.corpus import Corpus, ingest
from rlm_ray.engine import context_view
from rlm_ray.engine.context_view import ContextView
from rlm_ray.engine.workspace import Workspace
from rlm_ray.sim import register_policy


def _source_texts(root: Path) -> dict[str, str]:
    """path -> text as ingest decodes it, for every file the corpus kept."""
    return {p.relative_to(root).as_posix(): p.read_bytes().decode("utf-8", "replace")
            for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def subset_corpus(stdlib_subset, tmp_path_factory) -> Corpus:
    out = tmp_path_factory.mktemp("ctxseq") / "corpus"
    ingest([str(stdlib_subset)], str(out))
    return Corpus.open(str(out))


@pytest.fixture(scope="module")
def expected(subset_corpus, stdlib_subset) -> list[tuple[str, str]]:
    """(path, text) of every document in path order: paths from the docs table,
    texts read from disk."""
    texts = _source_texts(stdlib_subset)
    paths = sorted(row["path"] for row in subset_corpus.docs())
    assert len(paths) > 50 and set(paths) <= set(texts)
    return [(p, texts[p]) for p in paths]


@pytest.fixture(scope="module")
def repl(subset_corpus):
    """The engine's REPL over the corpus: Workspace -> real sandbox."""
    workspace = Workspace(context=None, view=ContextView(subset_corpus), host_functions={},
                          sandbox_opts={"timeout_s": 120})
    yield workspace
    workspace.close()


def run(workspace: Workspace, code: str) -> str:
    result = workspace.run(code, 120)
    assert result.error is None, result.error
    return result.output


def value(workspace: Workspace, code: str, name: str = "out"):
    """Run `code`, then read the REPL variable `name` (JSON, not the output view)."""
    run(workspace, code)
    return workspace.sandbox.get(name)


def error_of(workspace: Workspace, code: str) -> str:
    result = workspace.run(code, 120)
    assert result.error, f"{code!r} should have failed"
    return result.error.strip().splitlines()[-1]


def test_len_is_documents_not_tokens(repl, expected, subset_corpus):
    assert int(run(repl, "print(len(context))")) == len(expected)
    assert len(expected) != subset_corpus.stats["tokens"]


def test_index_and_negative_index_are_document_texts(repl, expected):
    out = value(repl, "out = [context[0], context[5], context[-1], context[-len(context)]]")
    assert out == [expected[0][1], expected[5][1], expected[-1][1], expected[0][1]]
    assert run(repl, "print(context.path(-1))").strip() == expected[-1][0]
    assert "out of range" in error_of(repl, "context[len(context)]")


def test_slices_are_lazy_views(repl, expected):
    out = value(repl, "s = context[3:9:2]\n"
                      "out = [len(s), type(s).__name__, list(s), s[-1], list(context[-3:][::-1])]")
    assert out[:2] == [3, "Documents"]
    assert out[2] == [t for _, t in expected[3:9:2]]
    assert out[3] == expected[7][1]
    assert out[4] == [t for _, t in expected[-3:][::-1]]
    described = run(repl, "print(context[3:9:2])")
    assert "3 documents" in described and expected[3][0] in described


def test_iterating_every_document_equals_the_corpus(repl, expected, subset_corpus):
    out = run(repl, "total = 0\nn = 0\nfor doc in context:\n    total += len(doc)\n    n += 1\n"
                    "print(n, total, context.stats['characters'], context.stats['documents'])")
    n, total, characters, documents = map(int, out.split())
    assert (n, total) == (len(expected), sum(len(t) for _, t in expected))
    assert (characters, documents) == (total, subset_corpus.stats["documents"])
    # Valid UTF-8 throughout this subset: the raw-file bytes agree too.
    assert subset_corpus.stats["non_utf8_replaced"] == 0
    utf8 = int(run(repl, "print(sum(len(d.encode()) for d in context))"))
    assert utf8 == subset_corpus.stats["bytes"]


def test_print_shows_a_short_description(repl, expected, subset_corpus):
    out = run(repl, "print(context)")
    assert len(out) < 1000
    assert f"{len(expected)} documents" in out and f"{subset_corpus.stats['tokens']} tokens" in out
    assert expected[0][0] in out
    for api in ("context.grep", "context.sql", "context.read", "for doc in context"):
        assert api in out
    assert run(repl, "print(repr(context))") == out


@pytest.mark.parametrize("code, names", [
    ("context.split()", ("context.split()", "context.grep")),
    ("context.splitlines()", ("context.splitlines()", "context.read")),
    ("import re\nlist(re.finditer('def ', context))", ("re.finditer", "context.grep")),
    ("import re\nre.findall(pattern='x', string=context)", ("re.findall", "context.grep")),
    ("'json' in context", ("in context", "context.grep")),
    ("context + 'x'", ("concatenation", "context.sql")),
    ("'x' + context", ("concatenation", "context.read")),
    ("context['json/__init__.py']", ("by position", "context.read(path)")),
    ("context[1.5]", ("int or a slice", "context.grep")),
])
def test_unsupported_operations_name_the_api(repl, code, names):
    message = error_of(repl, code)
    assert "HostObject" not in message
    for name in names:
        assert name in message, message


def test_corpus_api_still_works(repl, expected):
    sql, grep, read, docs, stats = value(
        repl, "out = [context.sql('SELECT count(*) AS n FROM docs'), "
              "context.grep('^import ', limit=3), context.read(context.path(0), 0, 2), "
              "[d['path'] for d in context.docs()], sorted(context.stats)]")
    assert sql == [{"n": len(expected)}]
    first_path, first_text = expected[0]
    assert read == "".join(first_text.splitlines(keepends=True)[:2])
    assert docs == [p for p, _ in expected]       # docs() is in the sequence's order
    assert len(grep) == 3 and all(re.match("import ", h["text"]) for h in grep)
    assert "characters" in stats and "source" not in stats


def test_rebinding_helpers_does_not_break_context(repl, expected):
    # The wrapper holds the host proxy itself: the model's names cannot break it.
    assert run(repl, "_rlm_corpus = None\nprint(len(context[:2]))").strip() == "2"
    assert run(repl, "print(len(context[-1]))").strip() == str(len(expected[-1][1]))


@pytest.fixture(scope="module")
def many_small(tmp_path_factory) -> Corpus:
    """More documents than one batch may hold, with sizes known from the files."""
    src = tmp_path_factory.mktemp("many")
    for i in range(context_view.DOC_BATCH_MAX + 40):
        (src / f"doc{i:04d}.txt").write_text(f"document {i}\n" + "x" * (i % 97) + "\n")
    out = tmp_path_factory.mktemp("many-corpus") / "c"
    ingest([str(src)], str(out))
    return Corpus.open(str(out))


def test_host_batches_are_bounded_by_count_and_bytes(many_small):
    view = ContextView(many_small)
    n = view.sequence_info()["documents"]
    assert n == context_view.DOC_BATCH_MAX + 40
    full = view.doc_texts(0, n)
    assert len(full) == context_view.DOC_BATCH_MAX          # the count bound
    sizes = {row["path"]: row["bytes"] for row in many_small.docs()}
    paths = view.doc_paths(0, n)
    assert paths == sorted(sizes)
    budget = 1000
    small = view.doc_texts(10, n, max_bytes=budget)
    assert 1 <= len(small) < context_view.DOC_BATCH_MAX
    assert sum(sizes[p] for p in paths[10:10 + len(small)]) <= budget      # the byte bound
    assert sum(sizes[p] for p in paths[10:11 + len(small)]) > budget       # and it was full
    assert small == full[10:10 + len(small)]
    assert view.doc_texts(5, 6, max_bytes=1) == [full[5]]   # one document always fits
    with pytest.raises(IndexError):
        view.doc_texts(0, n + 1)


@register_policy("test/iterate-context")
def _iterate_policy(messages: list[dict]) -> str:
    """Root: iterate every document in one block, then finish (sub-calls: unused)."""
    if len([m for m in messages if m["role"] == "user"]) == 1:
        return ("I first look at what the context is.\n```repl\nprint(context)\n"
                "total = sum(len(doc) for doc in context)\n```")
    return "```repl\nFINAL(f\"{len(context)} {total}\")\n```"


def test_iterating_through_the_real_engine(subset_corpus, expected, sim):
    from rlm_ray.engine import RLM

    server = sim()
    result = RLM("openai/test/iterate-context", api_base=server.base_url, local=True,
                 max_iterations=3).answer(subset_corpus, "How long is the corpus?")
    assert result.status == "ok", result.error
    assert result.answer == f"{len(expected)} {sum(len(t) for _, t in expected)}"
    assert "documents" in result.steps[0]["output"]


class CountingView(ContextView):
    """The real ContextView, counting the document batches the REPL asks for."""

    def __init__(self, corpus) -> None:
        super().__init__(corpus)
        self.batches: list[int] = []

    def doc_texts(self, start, stop, max_bytes=context_view.DOC_BATCH_BYTES):
        texts = super().doc_texts(start, stop, max_bytes)
        self.batches.append(len(texts))
        return texts


def test_small_batches_stream_through_the_repl(subset_corpus, expected, monkeypatch):
    # A 40 kB batch cap: iterating and an index loop both cross the bridge many
    # times, each batch whole documents, and the results are still exact.
    monkeypatch.setattr(context_view, "DOC_BATCH_BYTES", 40_000)
    view = CountingView(subset_corpus)
    workspace = Workspace(context=None, view=view, host_functions={},
                          sandbox_opts={"timeout_s": 120})
    try:
        texts = value(workspace, "out = [doc for doc in context]")
        assert texts == [t for _, t in expected]
        iterated = len(view.batches)
        assert iterated > 5 and sum(view.batches) == len(expected)
        assert iterated < len(expected) - 10        # several documents per batch
        view.batches.clear()
        texts = value(workspace, "out = [context[i] for i in range(len(context))]")
        assert texts == [t for _, t in expected]
        # consecutive indices come in batches (one single fetch first), not one
        # host call per document
        assert len(view.batches) <= iterated + 1
    finally:
        workspace.close()


def test_a_document_too_large_for_one_value_points_to_read(subset_corpus, expected, monkeypatch):
    largest = max(len(t.encode()) for _, t in expected)
    monkeypatch.setattr(context_view, "MAX_DOC_BYTES", largest - 1)
    workspace = Workspace(context=None, view=ContextView(subset_corpus), host_functions={},
                          sandbox_opts={"timeout_s": 120})
    try:
        index = next(i for i, (_, t) in enumerate(expected) if len(t.encode()) == largest)
        message = error_of(workspace, f"context[{index}]")
        assert message.startswith("ValueError") and "context.read(" in message
        assert expected[index][0] in message
    finally:
        workspace.close()


def test_context_is_back_after_the_worker_crashes(subset_corpus, expected):
    workspace = Workspace(context=None, view=ContextView(subset_corpus), host_functions={},
                          sandbox_opts={"timeout_s": 120})
    try:
        crashed = workspace.run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", 120)
        assert "SandboxCrash" in crashed.error     # a fresh worker: preludes reinstalled
        assert value(workspace, "out = [len(context), context[-1]]") == [len(expected),
                                                                          expected[-1][1]]
    finally:
        workspace.close()


def test_model_threads_read_the_right_documents(repl, expected):
    # Model code often fans out with threads; every index must map to its own text.
    out = value(repl, "from concurrent.futures import ThreadPoolExecutor\n"
                      "order = [i for k in range(4) for i in range(k, len(context), 4)]\n"
                      "with ThreadPoolExecutor(8) as pool:\n"
                      "    texts = list(pool.map(lambda i: context[i], order))\n"
                      "out = [order, texts]")
    order, texts = out
    assert sorted(order) == list(range(len(expected)))
    assert texts == [expected[i][1] for i in order]


def test_a_slice_of_the_corpus_is_a_childs_text_context(subset_corpus, expected, monkeypatch):
    """`rlm_query(p, context=context[a:b])`, as real models write it: the child
    gets those documents as one str (each headed by index and path); the corpus
    itself means the same corpus (None); other values pass unchanged; an
    oversized slice is a clear error, not a bridge TypeError."""
    monkeypatch.setattr(context_view, "CHILD_CONTEXT_BYTES", 200_000)
    seen: list = []

    def rlm_query(prompt, model=None, context=None):
        seen.append(context)
        return "child answer"

    def rlm_query_batched(prompts, model=None, contexts=None):
        seen.append(contexts)
        return ["child answer"] * len(prompts)

    workspace = Workspace(context=None, view=ContextView(subset_corpus),
                          host_functions={"rlm_query": rlm_query,
                                          "rlm_query_batched": rlm_query_batched},
                          sandbox_opts={"timeout_s": 120})
    try:
        run(workspace, "r1 = rlm_query('summarise these', context=context[2:4])")
        run(workspace, "r2 = rlm_query('the whole corpus', None, context)")
        run(workspace, "r3 = rlm_query_batched(['a', 'b'], contexts=[context[-1:], 'plain'])")
        run(workspace, "r4 = rlm_query('strided', context=context[5:0:-2])")
        error = error_of(workspace, "rlm_query('everything', context=context[:])")
    finally:
        workspace.close()

    def text(indices):
        return "\n".join(f"=== document {i}: {expected[i][0]} ===\n{expected[i][1]}\n"
                         for i in indices)

    last = len(expected) - 1
    assert seen[0] == text([2, 3])
    assert seen[1] is None
    assert seen[2] == [text([last]), "plain"]
    assert seen[3] == text([5, 3, 1])
    assert len(seen) == 4                      # the oversized call never reached the host
    assert error.startswith("ValueError") and "context=None" in error and "fewer documents" in error


@register_policy("test/child-slice")
def _child_slice_policy(messages: list[dict]) -> str:
    """Root: hand three documents to a child RLM, then answer with its reply.
    Child: report what its context is."""
    from rlm_ray.sim.registry import text_of

    users = [text_of(m["content"]) for m in messages if m["role"] == "user"]
    if "CHILD" in users[0]:
        return ("Let me see what I was given.\n```repl\n"
                "kind = f\"{type(context).__name__} {context.count('=== document ')}\"\n```\n"
                "That describes it.\nFINAL_VAR(kind)")
    if len(users) == 1:
        return ("A child reads the first three documents.\n```repl\n"
                "child = rlm_query('CHILD: what is your context?', context=context[:3])\n"
                "print(child)\n```")
    return "The child answered.\nFINAL_VAR(child)"


def test_a_child_rlm_over_a_slice_through_the_real_engine(subset_corpus, sim):
    from rlm_ray.engine import RLM

    server = sim()
    result = RLM("openai/test/child-slice", api_base=server.base_url, local=True,
                 max_depth=2, max_iterations=4).answer(subset_corpus, "Ask a child.")
    assert result.status == "ok", result.error
    assert result.answer == "str 3"
    assert any(c["kind"] == "rlm" for c in result.calls)
