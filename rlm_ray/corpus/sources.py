"""Turn SOURCE arguments into raw files: a codebase directory, a tar/zip
archive, a JSONL/Parquet table of documents, or any of these under s3://.

Each kind is a function in `SOURCE_KINDS`; `detect_kind` picks one from the
name, so a new kind is one registry entry, not another branch.
"""
from __future__ import annotations

import functools
import io
import os
import stat
import tarfile
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pathspec

from rlm_ray import storage
from rlm_ray.corpus.caps import MAX_ARCHIVE_BYTES, MAX_ARCHIVE_MEMBERS
from rlm_ray.errors import UserError
from rlm_ray.jsonl import iter_objects

VCS_DIRS = frozenset({".git", ".hg", ".svn"})


@dataclass
class RawFile:
    """A candidate document before decoding: bytes are loaded on demand so
    reading can run in parallel with tokenising."""

    path: str
    size: int
    load: Callable[[], bytes]   # picklable: it may run in a Ray worker


@dataclass
class ListOptions:
    max_file_bytes: int
    exclude: tuple[str, ...] = ()
    skips: Counter = field(default_factory=Counter)
    max_archive_bytes: int = MAX_ARCHIVE_BYTES
    max_archive_members: int = MAX_ARCHIVE_MEMBERS
    spool: Spool | None = None      # where archive members / records go; None keeps them in memory

    def spool_data(self, data: bytes) -> Callable[[], bytes]:
        return self.spool.add(data) if self.spool else _constant(data)


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
    if not storage.is_s3(uri):
        yield from _select(_local_tree(storage.filesystem(uri)[1], opts), opts)
        return
    files = [RawFile(e.relpath, e.size, _loader(e.uri)) for e in storage.list_prefix(uri)]
    yield from _select(files, opts)


def _loader(uri: str) -> Callable[[], bytes]:
    return functools.partial(storage.read_bytes, uri)


def _folder_pruner(exclude: tuple[str, ...]) -> Callable[[str], bool]:
    """Is a folder (relative path ending in "/") excluded as a whole? Then it
    is never walked: `--exclude site-packages/` must not cost a stat per file
    below it. As in git, nothing inside an excluded folder can be re-included;
    to stay exact we prune only when no `!` pattern is given."""
    if not exclude or any(p.lstrip().startswith("!") for p in exclude):
        return lambda rel: False
    spec = pathspec.GitIgnoreSpec.from_lines(exclude)
    return spec.match_file


def _local_tree(root: str, opts: ListOptions) -> list[RawFile]:
    """Walk a local folder without leaving it: a symlink is kept only when it
    names a regular file inside the root (read through its target); links that
    point outside, dangle, or name a directory are skipped as "symlink", and
    FIFOs, sockets and devices as "special" (reading a FIFO would block).
    Version-control folders are not walked, nor excluded folders (each counted
    once as "excluded")."""
    root_real = os.path.realpath(root)
    pruned = _folder_pruner(opts.exclude)
    files = []
    stack = [(root_real, "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue   # unreadable folder: nothing to ingest there
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if _inside(target, root_real) and os.path.isfile(target):
                    files.append(RawFile(safe_path(rel), os.stat(target).st_size,
                                         _local_loader(target, root_real)))
                else:
                    opts.skips["symlink"] += 1
            elif entry.is_dir(follow_symlinks=False):
                if entry.name in VCS_DIRS:
                    continue
                if pruned(rel + "/"):
                    opts.skips["excluded"] += 1
                    continue
                stack.append((entry.path, rel + "/"))
            elif entry.is_file(follow_symlinks=False):
                files.append(RawFile(safe_path(rel), entry.stat(follow_symlinks=False).st_size,
                                     _local_loader(entry.path, root_real)))
            else:
                opts.skips["special"] += 1
    return sorted(files, key=lambda f: f.path)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _local_loader(path: str, root: str) -> Callable[[], bytes]:
    return functools.partial(read_inside, path, root)


def read_inside(path: str, root: str) -> bytes:
    """Read a listed file, re-checking at read time that it still resolves
    inside `root` and is a regular file (it may have been swapped for a link)."""
    if not _inside(os.path.realpath(path), root):
        raise UserError(f"{path} moved outside its source folder during ingest")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserError(f"{path} is no longer a regular file")
        return handle.read()


class Spool:
    """Archive members and table records, unpacked once and sequentially to a
    local scratch folder, so ingest holds one member in memory at a time and
    workers read them like files. Files live on the driver's node only."""

    def __init__(self, directory: str):
        self.directory = directory
        self.count = 0

    def add(self, data: bytes) -> Callable[[], bytes]:
        self.count += 1
        path = os.path.join(self.directory, f"{self.count:09d}")
        with open(path, "wb") as out:
            out.write(data)
        return functools.partial(_read_spooled, path)


def _read_spooled(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _open_binary(uri: str, seekable: bool = False):
    if not storage.is_s3(uri):
        return open(storage.filesystem(uri)[1], "rb")
    fs, path = storage.filesystem(uri)
    return fs.open_input_file(path) if seekable else fs.open_input_stream(path)


def _check_caps(uri: str, members: int, total: int, opts: ListOptions) -> None:
    if members > opts.max_archive_members:
        raise UserError(f"{uri}: more than {opts.max_archive_members:,} members; raise "
                        f"--max-archive-members if this archive is trusted")
    if total > opts.max_archive_bytes:
        raise UserError(f"{uri}: uncompressed size exceeds {opts.max_archive_bytes:,} bytes "
                        f"(a zip bomb?); raise --max-archive-bytes if this archive is trusted")


def _tar(uri: str, opts: ListOptions) -> Iterator[RawFile]:
    # Pass 1 reads headers only (a .tar.gz is one stream: skipping decompresses
    # but keeps nothing), so the caps hold before a single member is unpacked.
    members = total = 0
    with _open_binary(uri) as raw, tarfile.open(fileobj=raw, mode="r|*") as archive:
        for member in archive:
            members += 1
            total += member.size if member.isfile() else 0
            _check_caps(uri, members, total, opts)
            archive.members = []   # stream mode would otherwise keep every header
    files = []
    with _open_binary(uri) as raw, tarfile.open(fileobj=raw, mode="r|*") as archive:
        for member in archive:
            archive.members = []
            if member.issym() or member.islnk():
                opts.skips["symlink"] += 1
            elif member.isfile():
                files.append(_spooled_member(member.name, member.size, opts,
                                             lambda m=member: archive.extractfile(m).read(opts.max_file_bytes + 1)))
    yield from _select(files, opts)


def _zip(uri: str, opts: ListOptions) -> Iterator[RawFile]:
    files = []
    with _open_binary(uri, seekable=True) as raw, zipfile.ZipFile(raw) as archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        _check_caps(uri, len(infos), sum(i.file_size for i in infos), opts)
        for info in infos:
            if stat.S_ISLNK(info.external_attr >> 16):
                opts.skips["symlink"] += 1
                continue
            # zipfile stops at the declared size, so a lying header cannot inflate more.
            files.append(_spooled_member(info.filename, info.file_size, opts,
                                         lambda i=info: archive.open(i).read(opts.max_file_bytes + 1)))
    yield from _select(files, opts)


def _spooled_member(name: str, size: int, opts: ListOptions, read: Callable[[], bytes]) -> RawFile:
    if size > opts.max_file_bytes:   # skipped later by _select; never unpacked
        return RawFile(_member_path(name), size, _constant(b""))
    return RawFile(_member_path(name), size, opts.spool_data(read()))


def _constant(data: bytes) -> Callable[[], bytes]:
    return functools.partial(bytes, data)


def _member_path(name: str) -> str:
    # Members are stored as "./a/b.py" or "a/b.py": both are the path "a/b.py";
    # "../" cannot climb above the archive's root.
    path = os.path.normpath("/" + name).lstrip("/").replace(os.sep, "/")
    return safe_path(path)


_CONTROL_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def safe_path(path: str) -> str:
    """A document path without control characters: newlines, ANSI escapes and
    bidi overrides from member names or file names are escaped (`\\x1b`), so a
    path prints as one inert line and stays distinct."""
    if path.isprintable():
        return path
    return "".join(
        (f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        if unicodedata.category(ch) in _CONTROL_CATEGORIES or ch in _BIDI_CONTROLS else ch
        for ch in path
    )


def _record(uri: str, line_no: int, record: dict, opts: ListOptions) -> RawFile | None:
    name = record.get("path") or record.get("id")
    text = record.get("text")
    if name is None or not isinstance(text, str):
        raise UserError(f"{uri}: record {line_no} needs a 'path' or 'id' and a string 'text'")
    data = text.encode("utf-8")
    if len(data) > opts.max_file_bytes:
        opts.skips["too_large"] += 1
        return None
    return RawFile(safe_path(str(name)), len(data), opts.spool_data(data))


def _jsonl(uri: str, opts: ListOptions) -> Iterator[RawFile]:
    # Line by line from the stream: a large table is never held whole.
    with _open_binary(uri) as raw:
        lines = io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
        for line_no, record in iter_objects(lines, uri):
            raw_file = _record(uri, line_no, record, opts)
            if raw_file:
                yield raw_file


def _parquet(uri: str, opts: ListOptions) -> Iterator[RawFile]:
    import pyarrow.parquet as pq

    with _open_binary(uri, seekable=True) as raw:
        try:
            table = pq.ParquetFile(raw)
        except Exception as exc:  # pyarrow raises several types for a non-Parquet file
            raise UserError(f"{uri}: not a readable Parquet file ({exc})") from None
        names = set(table.schema_arrow.names)
        if "text" not in names or not names & {"path", "id"}:
            raise UserError(f"{uri}: a documents table needs columns 'text' and 'path' or 'id'")
        columns = [c for c in ("path", "id", "text") if c in names]
        row_no = 0
        for batch in table.iter_batches(batch_size=256, columns=columns):
            for record in batch.to_pylist():
                row_no += 1
                raw_file = _record(uri, row_no, record, opts)
                if raw_file:
                    yield raw_file


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
