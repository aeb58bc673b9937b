"""Conditional writes on a results folder, local or S3: create-if-absent (the
lease's generations) and compare-and-swap on a generation stamped in the
body (`run.json`). S3 does both natively (If-None-Match / If-Match, which
moto_server honours too); a local folder uses link(2) and a flock."""
from __future__ import annotations

import fcntl
import json
import os
import random
import tempfile
import time

from rlm_ray import storage

RACE_BACKOFF_S = 0.2


def create_exclusive(uri: str, data: bytes) -> bool:
    """Write `uri` only if it does not exist; False when someone else's is there."""
    if storage.is_s3(uri):
        return _s3_create_exclusive(uri, data)
    folder = os.path.dirname(uri)
    os.makedirs(folder, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".lease-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.link(temp, uri)     # atomic, and fails if the name exists
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(temp)


def _s3_client():
    import boto3

    settings = storage.S3Settings.from_env()
    endpoint = f"{settings.scheme}://{settings.endpoint}" if settings.endpoint else None
    return boto3.client("s3", region_name=settings.region, endpoint_url=endpoint,
                        aws_access_key_id=settings.access_key,
                        aws_secret_access_key=settings.secret_key,
                        aws_session_token=settings.session_token)


def _s3_create_exclusive(uri: str, data: bytes) -> bool:
    from botocore.exceptions import ClientError

    bucket, _, key = uri[len("s3://"):].partition("/")
    try:
        _s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        return True
    except ClientError as exc:
        if _precondition_failed(exc):
            return False
        raise


def write_unless_newer(uri: str, data: bytes, generation: int, lock_uri: str) -> bool:
    """Replace `uri` with `data` unless its stored `lease_generation` is higher
    than `generation`; False (nothing written) when it is."""
    if storage.is_s3(uri):
        return _s3_write_fenced(uri, data, generation)
    return _local_write_fenced(uri, data, generation, lock_uri)


def _stored_generation(data: bytes | None) -> int:
    try:
        return int(json.loads(data).get("lease_generation") or 0) if data else 0
    except (ValueError, TypeError, AttributeError):
        return 0


def _local_write_fenced(uri: str, data: bytes, generation: int, lock_uri: str) -> bool:
    """Read-compare-replace under an exclusive flock: holds between processes of
    one host (and on NFS with lock support); folders shared by machines belong on S3."""
    os.makedirs(os.path.dirname(lock_uri), exist_ok=True)
    with open(lock_uri, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            try:
                with open(uri, "rb") as handle:
                    existing = handle.read()
            except FileNotFoundError:
                existing = None
            if _stored_generation(existing) > generation:
                return False
            storage.write_bytes_atomic(uri, data)
            return True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _s3_write_fenced(uri: str, data: bytes, generation: int, tries: int = 8) -> bool:
    """Compare-and-swap on the object's ETag (If-Match / If-None-Match)."""
    from botocore.exceptions import ClientError

    bucket, _, key = uri[len("s3://"):].partition("/")
    client = _s3_client()
    for _ in range(tries):
        try:
            got = client.get_object(Bucket=bucket, Key=key)
            existing, condition = got["Body"].read(), {"IfMatch": got["ETag"]}
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                raise
            existing, condition = None, {"IfNoneMatch": "*"}
        if _stored_generation(existing) > generation:
            return False
        try:
            client.put_object(Bucket=bucket, Key=key, Body=data, **condition)
            return True
        except ClientError as exc:
            if not _precondition_failed(exc):
                raise
            time.sleep(RACE_BACKOFF_S * random.random())   # someone wrote between: compare again
    return False   # it kept changing under us: a newer holder is writing


def _precondition_failed(exc) -> bool:
    code = exc.response.get("Error", {}).get("Code")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)
