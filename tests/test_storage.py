"""rlm_ray.storage over the local filesystem and a real S3 endpoint (moto)."""
from __future__ import annotations

import os

import pytest

from rlm_ray import storage


def test_local_roundtrip_and_listing(tmp_path):
    root = str(tmp_path / "store")
    storage.write_bytes_atomic(storage.join(root, "a", "b.bin"), b"one")
    storage.write_bytes_atomic(storage.join(root, "c.txt"), b"two")
    assert storage.read_bytes(storage.join(root, "a/b.bin")) == b"one"
    assert storage.exists(storage.join(root, "c.txt")) and storage.is_dir(root)
    listed = storage.list_prefix(root)
    assert [e.relpath for e in listed] == ["a/b.bin", "c.txt"]
    assert [e.size for e in listed] == [3, 3]
    storage.delete(storage.join(root, "c.txt"))
    storage.delete(storage.join(root, "c.txt"))  # deleting twice is fine
    assert not storage.exists(storage.join(root, "c.txt"))


def test_local_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "f.json"
    storage.write_bytes_atomic(str(target), b"old")
    storage.write_bytes_atomic(str(target), b"new content")
    assert target.read_bytes() == b"new content"
    assert os.listdir(tmp_path) == ["f.json"]
    assert (target.stat().st_mode & 0o777) == 0o666 & ~_umask()


def test_local_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "f.bin"
    storage.write_bytes_atomic(str(target), b"old")
    with pytest.raises(TypeError):
        storage.write_bytes_atomic(str(target), "not bytes")  # fails mid-write
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_s3_roundtrip_uses_endpoint_from_env(s3_bucket):
    root = f"s3://{s3_bucket}/prefix"
    assert storage.is_s3(root) and not storage.is_s3("/tmp/x")
    assert not storage.exists(storage.join(root, "x.bin"))
    assert not storage.is_dir(root)
    storage.write_bytes_atomic(storage.join(root, "x.bin"), b"\x00payload")
    storage.write_bytes_atomic(storage.join(root, "d", "y.txt"), b"y" * 7_000_000)  # multipart size
    assert storage.read_bytes(storage.join(root, "x.bin")) == b"\x00payload"
    assert len(storage.read_bytes(storage.join(root, "d/y.txt"))) == 7_000_000
    assert storage.is_dir(root)
    assert [(e.relpath, e.size) for e in storage.list_prefix(root)] == [("d/y.txt", 7_000_000), ("x.bin", 8)]
    assert storage.list_prefix(root)[1].uri == f"{root}/x.bin"
    storage.delete(storage.join(root, "x.bin"))
    assert [e.relpath for e in storage.list_prefix(root)] == ["d/y.txt"]


def test_s3_settings_read_standard_env(s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    settings = storage.S3Settings.from_env()
    assert settings.endpoint == s3_endpoint.removeprefix("http://")
    assert settings.scheme == "http" and settings.region == "eu-west-3"
