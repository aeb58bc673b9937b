"""The one way the project reaches files: local paths and `s3://bucket/key`.

Both go through `pyarrow.fs`, so callers never branch on the backend. S3
settings come from the standard AWS environment (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` /
`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`); nothing here logs them.
"""
from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

S3_SCHEME = "s3://"


def is_s3(uri: str) -> bool:
    return str(uri).startswith(S3_SCHEME)


@dataclass(frozen=True)
class S3Settings:
    """What both pyarrow and DuckDB need to reach S3, read from the environment."""

    region: str
    endpoint: str | None      # host:port, without scheme
    scheme: str               # "http" for a local endpoint such as moto
    access_key: str | None
    secret_key: str | None
    session_token: str | None

    @classmethod
    def from_env(cls) -> S3Settings:
        url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        parsed = urlparse(url) if url else None
        return cls(
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            endpoint=parsed.netloc if parsed else None,
            scheme=(parsed.scheme if parsed else "https") or "https",
            access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            session_token=os.environ.get("AWS_SESSION_TOKEN"),
        )


_S3_CACHE: dict[S3Settings, pafs.S3FileSystem] = {}


def _s3_filesystem() -> pafs.S3FileSystem:
    # One client per distinct environment: building one costs milliseconds.
    settings = S3Settings.from_env()
    if settings not in _S3_CACHE:
        _S3_CACHE[settings] = pafs.S3FileSystem(
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            session_token=settings.session_token,
            region=settings.region,
            endpoint_override=settings.endpoint,
            scheme=settings.scheme,
            allow_bucket_creation=False,
            # Delayed open lets a small object go up as one PutObject instead of a
            # multipart upload: fewer round trips, and atomic without a Complete step.
            allow_delayed_open=True,
        )
    return _S3_CACHE[settings]


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3:// URI."""
    uri = str(uri)
    if is_s3(uri):
        return _s3_filesystem(), uri[len(S3_SCHEME):].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    uri = str(uri)
    if is_s3(uri):
        return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(uri, *parts)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Readers see the old content or the new, never a prefix of it."""
    fs, path = filesystem(uri)
    if is_s3(uri):
        # A single PUT is atomic on S3: the object appears whole or not at all.
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".tmp-{uuid.uuid4().hex[:8]}-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    fs, path = filesystem(uri)
    if is_s3(uri):
        # S3 has no directories: a prefix "is" one when something lives under it.
        return bool(_list(fs, path, max_items=1))
    return fs.get_file_info(path).type == pafs.FileType.Directory


@dataclass(frozen=True)
class Entry:
    uri: str
    relpath: str      # relative to the listed prefix, "/"-separated
    size: int


def _list(fs: pafs.FileSystem, path: str, max_items: int | None = None) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    infos = [i for i in fs.get_file_info(selector) if i.type == pafs.FileType.File]
    return infos[:max_items] if max_items else infos


def list_prefix(uri: str) -> list[Entry]:
    """Every file under a directory / prefix, recursively, sorted by path."""
    fs, root = filesystem(uri)
    scheme = S3_SCHEME if is_s3(uri) else ""
    entries = [
        Entry(uri=scheme + info.path, relpath=info.path[len(root):].lstrip("/"), size=info.size or 0)
        for info in _list(fs, root)
    ]
    return sorted(entries, key=lambda e: e.relpath)


def delete(uri: str) -> None:
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return
    fs.delete_file(path)


def makedirs(uri: str) -> None:
    """Local directories only; S3 prefixes exist implicitly."""
    if not is_s3(uri):
        os.makedirs(filesystem(uri)[1], exist_ok=True)
