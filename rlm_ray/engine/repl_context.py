"""`context` over a corpus, REPL side: a read-only, lazy sequence of documents
(the list shape of the RLM paper's contexts) that also carries the corpus API.

`CONTEXT_PRELUDE` runs in the sandbox after `repl_prelude.PRELUDE`. It wraps
the host proxy `_rlm_corpus` (engine.context_view.ContextView) and binds
only `context`; everything else stays inside a function so the model's
namespace gains no helper names. Documents are index i = i-th in path order;
slices are lazy views; iteration fetches whole documents in batches bounded
by bytes and count (the host caps both), so the sandbox holds one batch at a
time, never the corpus.

Operations a str would allow (`.split()`, `+`, `in`, `re.finditer(p, context)`)
raise errors that name the API doing the job (grep / read / sql) instead of
the bridge's bare "'HostObject' ..." TypeError.
"""
from __future__ import annotations

HOST_NAME = "_rlm_corpus"

CONTEXT_PRELUDE = r'''
def _rlm_bind_context(host):
    import functools
    import operator
    import re

    info = host.sequence_info()
    batch_bytes = info["batch_bytes"]
    child_bytes = info.get("child_context_bytes", 8 << 20)
    corpus_size = info["documents"]
    api = ("use context.grep(pattern) to find lines in every document, "
           "context.read(path, start, end) for a document's lines, "
           "context.sql(query) for SQL over the views chunks and docs, "
           "or context[i] / `for doc in context:` for whole documents (each a str)")

    def not_a_str(what):
        return (f"{what}: context is a read-only sequence of {corpus_size} documents "
                f"(a corpus), not a str; {api}")

    def fetch(indices):
        """Texts of the documents at `indices` (a range), lazily, batch by batch."""
        if indices.step == 1:
            at, stop = indices.start, indices.stop
            while at < stop:
                batch = host.doc_texts(at, stop, batch_bytes)
                if not batch:
                    raise RuntimeError(f"no documents returned at index {at}")
                at += len(batch)
                batch.reverse()
                while batch:        # hand each text over, keep only the rest of the batch
                    yield batch.pop()
        else:                       # strided or reversed: one document per fetch
            for i in indices:
                yield document(i)

    # (first index, texts) of the last batch, replaced as one tuple so model
    # threads reading documents concurrently never see one batch's start with
    # another's texts.
    window = [(0, []), -2]

    def document(index):
        """One document's text. Consecutive indices (`for i in range(len(context)):
        context[i]`) are served from one batch, so an index loop costs what
        iterating does; other accesses fetch just the document."""
        start, texts = window[0]
        if 0 <= index - start < len(texts):
            text = texts[index - start]
        else:
            stop = corpus_size if index == window[1] + 1 else index + 1
            window[0] = (0, [])                  # drop the old batch before fetching
            texts = host.doc_texts(index, stop, batch_bytes)
            window[0] = (index, texts)
            text = texts[0]
        window[1] = index
        return text

    class Documents:
        """A read-only, lazy sequence of corpus documents (each a str).
        len() = number of documents; [i] = a document's text; [a:b] = a lazy
        slice; iterating fetches documents in batches."""
        __slots__ = ("_indices",)

        def __init__(self, indices):
            self._indices = indices

        def __len__(self):
            return len(self._indices)

        def __getitem__(self, key):
            if isinstance(key, slice):
                return Documents(self._indices[key])
            if isinstance(key, str):
                raise TypeError(f"context[{key!r}]: documents are indexed by position (int) "
                                f"or slice; read a document by path with context.read(path)")
            try:
                index = self._indices[operator.index(key)]
            except TypeError:
                raise TypeError(f"context[...] takes an int or a slice, not "
                                f"{type(key).__name__}; {api}") from None
            except IndexError:
                raise IndexError(f"document index {key} out of range: this sequence has "
                                 f"{len(self)} documents") from None
            return document(index)

        def __iter__(self):
            return fetch(self._indices)

        def __reversed__(self):
            return fetch(self._indices[::-1])

        def __contains__(self, item):
            raise TypeError(f"`{item!r:.60} in context` would read every document: use "
                            f"context.grep(text, regex=False) to find it, or "
                            f"`any(text in doc for doc in context)` to scan the documents")

        def __add__(self, other):
            raise TypeError(not_a_str("context + ... (concatenation)"))

        def __radd__(self, other):
            raise TypeError(not_a_str("... + context (concatenation)"))

        def __mul__(self, other):
            raise TypeError(not_a_str("context * n (repetition)"))

        __iadd__, __rmul__ = __add__, __mul__

        def count(self, *args):
            raise TypeError(not_a_str("context.count()"))

        def index(self, *args):
            raise TypeError(not_a_str("context.index()"))

        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            what = f"context.{name}" + ("()" if callable(getattr(str, name, None)) else "")
            raise AttributeError(not_a_str(f"{what} does not exist"))

        def _span(self):
            r = self._indices
            if not r:
                return "no documents"
            first, last = r[0], r[-1]
            step = "" if r.step == 1 else f", step {r.step}"
            return f"{len(r)} documents (indices {first}..{last}{step} of {corpus_size})"

        def __repr__(self):
            first = [host.doc_paths(i, i + 1)[0] for i in self._indices[:3]]
            more = ", ..." if len(self._indices) > 3 else ""
            return (f"<lazy slice of context: {self._span()}; nothing read yet. Index it, "
                    f"iterate it or list() it for the texts. Paths: "
                    f"{', '.join(first) or '-'}{more}>")

        __str__ = __repr__

    class CorpusContext(Documents):
        """The corpus: a read-only, lazy sequence of its documents in path order
        (len, index, slice, iterate) plus the search API: grep, read, sql, docs,
        stats, path."""
        __slots__ = ()

        def sql(self, query):
            """Rows (dicts) of one DuckDB SELECT over the views chunks and docs."""
            return host.sql(query)

        def grep(self, pattern, limit=100, regex=True, case=False):
            """Matching lines of every document: [{doc_id, path, line, text}]."""
            return host.grep(pattern, limit=limit, regex=regex, case=case)

        def read(self, doc, start=0, end=None):
            """Lines [start, end) of a document (path or doc_id), 0-based."""
            return host.read(doc, start, end)

        def docs(self, limit=None):
            """One dict per document, in the same order as context[i]."""
            return host.docs(limit)

        def path(self, i):
            """The path of document i (negative i counts from the end)."""
            try:
                index = range(corpus_size)[operator.index(i)]
            except IndexError:
                raise IndexError(f"document index {i} out of range: the corpus has "
                                 f"{corpus_size} documents") from None
            return host.doc_paths(index, index + 1)[0]

        @property
        def stats(self):
            """Counts: documents, chunks, tokens, bytes (raw files), characters, ..."""
            return host.stats

        def __repr__(self):
            first = ", ".join(host.doc_paths(0, min(3, corpus_size)))
            return (
                f"<context: a read-only corpus of {corpus_size} documents, {info['tokens']} "
                f"tokens; nothing is loaded until asked.\n"
                f"  As a list of documents: len(context) = {corpus_size}; context[i] (also "
                f"context[-1]) is a document's full text; context[a:b] and `for doc in context:` "
                f"read lazily in batches (path order, as context.docs()).\n"
                f"  To search without reading everything: context.grep(pattern), "
                f"context.sql(query) (views chunks, docs), context.read(path, start, end), "
                f"context.docs(), context.stats, context.path(i).\n"
                f"  First documents: {first}{', ...' if corpus_size > 3 else ''}>")

        __str__ = __repr__

    def guard(function, position):
        # re's C code would say "expected string or bytes-like object, got ..."
        @functools.wraps(function)
        def guarded(*args, **kwargs):
            text = args[position] if len(args) > position else kwargs.get("string")
            if isinstance(text, Documents):
                raise TypeError(not_a_str(f"re.{function.__name__}(pattern, context)")
                                + f"; or run re.{function.__name__} on each document")
            return function(*args, **kwargs)
        guarded._rlm_guarded = True
        return guarded

    for name, position in (("search", 1), ("match", 1), ("fullmatch", 1), ("finditer", 1),
                           ("findall", 1), ("split", 1), ("sub", 2), ("subn", 2)):
        if not getattr(getattr(re, name), "_rlm_guarded", False):
            setattr(re, name, guard(getattr(re, name), position))

    root = CorpusContext(range(corpus_size))

    def as_child_context(value):
        """What a child RLM gets for `context=`: the corpus itself means the same
        corpus (None); a slice of it becomes one str of its documents, each
        headed by its index and path, up to child_bytes; anything else as is."""
        if value is root:
            return None
        if not isinstance(value, Documents):
            return value
        r = value._indices
        paths = (host.doc_paths(r.start, r.stop) if r.step == 1 and len(r)
                 else [host.doc_paths(i, i + 1)[0] for i in r])
        parts, size = [], 0
        for i, path, text in zip(r, paths, fetch(r)):
            parts.append(f"=== document {i}: {path} ===\n{text}\n")
            size += len(parts[-1].encode("utf-8", "replace"))
            if size > child_bytes:
                raise ValueError(
                    f"context={value!r:.80}... is over {child_bytes >> 20} MiB of text as a "
                    f"child's context; pass fewer documents (e.g. context[a:a + 10]), or "
                    f"context=None to give the child the whole corpus and name the documents "
                    f"in its prompt")
        return "\n".join(parts)

    def converting(function, position, keyword, convert):
        # The official signatures: (prompt(s), model=None, context(s)=None).
        @functools.wraps(function)
        def call(*args, **kwargs):
            args = list(args)
            if len(args) > position:
                args[position] = convert(args[position])
            if keyword in kwargs:
                kwargs[keyword] = convert(kwargs[keyword])
            return function(*args, **kwargs)
        return call

    def each(contexts):
        return None if contexts is None else [as_child_context(c) for c in contexts]

    g = globals()
    for name, keyword, convert in (("rlm_query", "context", as_child_context),
                                   ("rlm_query_batched", "contexts", each)):
        if g.get(name) is not None:
            g[name] = converting(g[name], 2, keyword, convert)
    return root


context = _rlm_bind_context(_rlm_corpus)
del _rlm_bind_context
'''
