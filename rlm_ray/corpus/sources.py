"""Turn SOURCE arguments into raw files: a codebase directory, a tar/zip
archive, a JSONL/Parquet table of documents, or any of these under s3://.

Each kind is a function in `SOURCE_KINDS`; `detect_kind` picks one from the
name, so a new kind is one registry entry, not another branch.
"""
from __future__ import annotations

import io
import os
import tarfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pathspec

from rlm_ray import storage
from rlm_ray.errors import UserError
from rlm_ray.jsonl import iter_objects

VCS_DIRS = frozenset({".git", ".hg", ".svn"})


@dataclass
class RawFile:
    """A candidate document before decoding: bytes are loaded on demand so
    reading can run in parallel with tokenising."""

    path: str
    size: int
    load: Callable[[], bytes]


@dataclass
class ListOptions:
    max_file_bytes: int
    exclude: tuple[str, ...] = ()
    skips: Counter = field(default_factory=Counter)


class IgnoreRules:
    """`.gitignore` files anywhere in a tree (deeper ones win, `!` re-includes)
    plus the user's `--exclude` globs, which use the same syntax from the root."""

    def __init__(self, exclude: tuple[str, ...] = ()):
        self.exclude = pathspec.GitIgnoreSpec.from_lines(exclude) if exclude else None
        self.gitignores: dict[str, pathspec.GitIgnoreSpec] = {}

    def add_gitignore(self, directory: str, text: str) -> None:
        self.gitignores[directory.strip("/")] = pathspec.GitIgnoreSpec.from_lines(text.splitlines())

    def reason(self, relpath: str) -> str | None:
        if self.exclude is not None and self.exclude.match_file(relpath):
            return "excluded"
        ignored = False
        # Root first, deepest last: a nested .gitignore overrides its parents.
        for directory in sorted(self.gitignores, key=lambda d: d.count("/") + bool(d)):
            if directory and not relpath.startswith(directory + "/"):
                continue
            result = self.gitignores[directory].check_file(relpath[len(directory) + 1:] if directory else relpath)
            if result.include is not None:
                ignored = result.include
        return "ignored" if ignored else None


def _in_vcs_dir(relpath: str) -> bool:
    return any(part in VCS_DIRS for part in relpath.split("/")[:-1])


def _select(files: list[RawFile], opts: ListOptions) -> Iterator[RawFile]:
    """Apply .git/, .gitignore, --exclude and the size cap to a listed tree."""
    files = [f for f in files if not _in_vcs_dir(f.path)]
    rules = IgnoreRules(opts.exclude)
    for f in files:
        if os.path.basename(f.path) == ".gitignore":
            rules.add_gitignore(os.path.dirname(f.path), f.load().decode("utf-8", "replace"))
    for f in files:
        reason = rules.reason(f.path)
        if reason is None and f.size > opts.max_file_bytes:
            reason = "too_large"
        if reason:
            opts.skips[reason] += 1
        else:
            yield f


def _tree(uri: str, opts: ListOptions) -> Iterator[RawFile]:
    files = [RawFile(e.relpath, e.size, _loader(e.uri)) for e in storage.list_prefix(uri)]
    yield from _select(files, opts)


def _loader(uri: str) -> Callable[[], bytes]:
    return lambda: storage.read_bytes(uri)


def _constant(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _tar(uri: str, opts: ListOptions) -> Iterator[RawFile]:
    files = []
    # Archives are read once, sequentially (a .tar.gz is one compressed stream).
    with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(uri)), mode="r:*") as archive:
        for member in archive:
            if not member.isfile():
                continue
            data = b"" if member.size > opts.max_file_bytes else archive.extractfile(member).read()
            files.append(RawFile(_member_path(member.name), member.size, _constant(data)))
    yield from _select(files, opts)


def _zip(uri: str, opts: ListOptions) -> Iterator[RawFile]:
    files = []
    with zipfile.ZipFile(io.BytesIO(storage.read_bytes(uri))) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            data = b"" if info.file_size > opts.max_file_bytes else archive.read(info)
            files.append(RawFile(_member_path(info.filename), info.file_size, _constant(data)))
    yield from _select(files, opts)


def _member_path(name: str) -> str:
    # Members are stored as "./a/b.py" or "a/b.py": both are the path "a/b.py".
    return os.path.normpath(name.lstrip("/")).replace(os.sep, "/")


def _record(uri: str, line_no: int, record: dict, opts: ListOptions) -> RawFile | None:
    name = record.get("path") or record.get("id")
    text = record.get("text")
    if name is None or not isinstance(text, str):
        raise UserError(f"{uri}: record {line_no} needs a 'path' or 'id' and a string 'text'")
    data = text.encode("utf-8")
    if len(data) > opts.max_file_bytes:
        opts.skips["too_large"] += 1
        return None
    return RawFile(str(name), len(data), _constant(data))


def _jsonl(uri: str, opts: ListOptions) -> Iterator[RawFile]:
    text = storage.read_bytes(uri).decode("utf-8", "replace")
    for line_no, record in iter_objects(text, uri):
        raw = _record(uri, line_no, record, opts)
        if raw:
            yield raw


def _parquet(uri: str, opts: ListOptions) -> Iterator[RawFile]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    except Exception as exc:  # pyarrow raises several types for a non-Parquet file
        raise UserError(f"{uri}: not a readable Parquet file ({exc})") from None
    names = set(table.column_names)
    if "text" not in names or not names & {"path", "id"}:
        raise UserError(f"{uri}: a documents table needs columns 'text' and 'path' or 'id'")
    for row_no, record in enumerate(table.to_pylist(), start=1):
        raw = _record(uri, row_no, record, opts)
        if raw:
            yield raw


SOURCE_KINDS: dict[str, Callable[[str, ListOptions], Iterator[RawFile]]] = {
    "tree": _tree,
    "tar": _tar,
    "zip": _zip,
    "jsonl": _jsonl,
    "parquet": _parquet,
}

# Longest suffix first so ".tar.gz" wins over ".gz".
SUFFIX_KINDS: dict[str, str] = {
    ".tar.gz": "tar", ".tgz": "tar", ".tar.bz2": "tar", ".tar.xz": "tar", ".tar": "tar",
    ".zip": "zip", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
}


def detect_kind(uri: str) -> str:
    if not storage.exists(uri) and not storage.is_dir(uri):
        raise UserError(f"source not found: {uri}")
    if storage.is_dir(uri):
        return "tree"
    for suffix, kind in SUFFIX_KINDS.items():
        if uri.lower().endswith(suffix):
            return kind
    raise UserError(
        f"unsupported source {uri}: expected a directory, an s3:// prefix, or a file ending in "
        + ", ".join(SUFFIX_KINDS)
    )


def list_source(uri: str, opts: ListOptions) -> list[RawFile]:
    try:
        return list(SOURCE_KINDS[detect_kind(uri)](uri, opts))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise UserError(f"cannot read source {uri}: {exc}") from None


def source_label(uri: str) -> str:
    """A short name for a source, used to prefix paths when sources collide."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    for suffix in sorted(SUFFIX_KINDS, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
