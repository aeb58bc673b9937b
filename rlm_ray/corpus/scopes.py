"""Scopes: the part of a corpus one question is about, written as path globs.

Glob syntax (the same for a row's `scope` and for `--for-each`): `*` is any
run of characters within one path segment, `?` one character of a segment,
`[...]` a character class, `**` any run of characters across segments
(`repos/django/**` is everything under that folder). A glob ending in `/`
names a folder: as a scope it means everything under it; in `--for-each` it
expands to each matching folder, where a glob without one expands to each
matching document.

Globs become anchored RE2 patterns, so matching runs vectorised over the
corpus's document index (Arrow here; the same patterns work in DuckDB), never
one Python call per document. Everything here reads only the corpus's small
docs table (path, tokens, sha256), never its text.
"""
from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rlm_ray import storage
from rlm_ray.errors import UserError

DOC_INDEX_COLUMNS = ("path", "n_tokens", "sha256")
_GLOB_TOKEN = re.compile(r"\*\*|\*|\?|\[[^\]/]+\]")
_GLOB_SPECIALS = re.compile(r"([*?\[])")


def glob_regex(glob: str, folder_means_tree: bool = True) -> str:
    """An anchored RE2/Python pattern for `glob` (see the module docstring).
    `folder_means_tree=False` matches a folder glob against folder paths
    themselves (`repos/*/` against `repos/django/`), as `--for-each` does."""
    glob = glob[2:] if glob.startswith("./") else glob
    if glob.endswith("/") and folder_means_tree:
        glob += "**"   # a folder as a scope: everything under it
    out, pos = ["^"], 0
    for match in _GLOB_TOKEN.finditer(glob):
        out.append(re.escape(glob[pos:match.start()]))
        token = match.group()
        if token == "**":
            out.append(".*")
        elif token == "*":
            out.append("[^/]*")
        elif token == "?":
            out.append("[^/]")
        else:
            body = token[1:-1]
            negate = body[0] in "!^"
            body = body[1:] if negate else body
            escaped = "".join("\\" + c if c in "\\^]" else c for c in body)
            out.append(f"[^/{escaped}]" if negate else f"[{escaped}]")
        pos = match.end()
    out.append(re.escape(glob[pos:]) + "$")
    return "".join(out)


def escape_glob(path: str) -> str:
    """A glob that matches exactly `path` (its `*`, `?`, `[` taken literally)."""
    return _GLOB_SPECIALS.sub(r"[\1]", path)


def normalize_scope(value: object, where: str) -> tuple[str, ...] | None:
    """A row's `scope` cell (a glob, a JSON list of globs, or a list) as a tuple
    of globs; None when the row has none."""
    import json

    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise UserError(f"{where}: scope is not a JSON list of globs: "
                                f"{text[:80]!r}") from None
        else:
            value = [text]
    if not isinstance(value, (list, tuple)) or not all(isinstance(g, str) for g in value):
        raise UserError(f"{where}: scope must be a glob or a list of globs, got {value!r}")
    globs = tuple(g.strip() for g in value if g.strip())
    if not globs:
        raise UserError(f"{where}: scope is an empty list (leave it out to see the whole corpus)")
    return globs


def read_doc_index(docs_uri: str) -> pa.Table:
    """path, n_tokens, sha256 of every document (only those columns are read)."""
    # Batch by batch through ParquetFile, not read_table: the dataset machinery and
    # whole-file decoding buffers cost the driver more memory than the index itself.
    parquet = pq.ParquetFile(io.BytesIO(storage.read_bytes(docs_uri)))
    batches = parquet.iter_batches(batch_size=16_384, columns=list(DOC_INDEX_COLUMNS),
                                   use_threads=False)
    schema = pa.schema([parquet.schema_arrow.field(name) for name in DOC_INDEX_COLUMNS])
    return pa.Table.from_batches(list(batches), schema=schema)


def doc_index(corpus) -> pa.Table:
    """The document index of a `Corpus` (or of a corpus URI)."""
    if isinstance(corpus, str):
        from rlm_ray.corpus.layout import read_manifest

        uri, manifest = corpus, read_manifest(corpus)
    else:
        uri, manifest = corpus.uri, corpus.manifest
    return read_doc_index(storage.join(uri, manifest["docs_file"]))


def match_mask(paths: pa.Array | pa.ChunkedArray, globs: Sequence[str]) -> pa.ChunkedArray:
    """Which paths any of `globs` matches (vectorised, RE2)."""
    mask = None
    for glob in globs:
        hit = pc.match_substring_regex(paths, glob_regex(glob))
        mask = hit if mask is None else pc.or_(mask, hit)
    return mask if mask is not None else pc.equal(paths, pa.scalar(None, pa.string()))


@dataclass(frozen=True)
class ScopeSize:
    documents: int
    tokens: int
    sha256: str   # of the sorted (path, document sha256) pairs: changes iff a document did


def group_digests(paths: pa.Array | pa.ChunkedArray, shas: pa.Array | pa.ChunkedArray,
                  counts: Sequence[int]) -> list[str]:
    """The identity of each group of documents: sha256 over its `path NUL sha256 LF`
    lines, for rows sorted by group then path, `counts[k]` rows in group k. Changes iff
    a document of the group was added, removed, renamed or edited. The lines are built
    in Arrow and hashed straight from its buffer (no Python object per document)."""
    joined = pc.binary_join_element_wise(paths, shas, "\x00")
    lines = pc.binary_join_element_wise(joined, "", "\n").cast(pa.large_string())
    lines = lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines
    _, offset_buffer, data_buffer = lines.buffers()
    data = memoryview(data_buffer or b"")
    # int64 positions in `data`, one more than rows; a sliced array starts at lines.offset.
    offsets = memoryview(offset_buffer).cast("q") if offset_buffer is not None else [0]
    digests, start = [], lines.offset
    for count in counts:
        begin, end = offsets[start], offsets[start + count]
        digests.append(hashlib.sha256(data[begin:end]).hexdigest())
        start += count
    return digests


def scope_size(index: pa.Table, globs: Sequence[str]) -> ScopeSize:
    """Documents, tokens and content digest of the part of `index` that `globs` cover."""
    part = index.filter(match_mask(index.column("path"), globs)).sort_by("path")
    tokens = pc.sum(part.column("n_tokens")).as_py() or 0
    digest = group_digests(part.column("path"), part.column("sha256"), [part.num_rows])[0]
    return ScopeSize(part.num_rows, int(tokens), digest)


def describe_scope(globs: Sequence[str], size: ScopeSize) -> str:
    """The scope's lines of the first user message's metadata."""
    return "\n".join([f"scope: {', '.join(globs)}",
                      f"scope_documents: {size.documents}", f"scope_tokens: {size.tokens}",
                      "(this question is about the documents in its scope)"])
