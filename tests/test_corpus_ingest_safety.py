"""Ingest stays inside its source and its memory: symlinks are not
followed out of the source root, archives have size and member caps with a
one-line error (a zip bomb, a 1 GiB archive), and member / file names with
control characters never become document paths verbatim."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import tarfile
import time
import unicodedata
import zipfile
import zlib
from pathlib import Path

import psutil
import pytest

from rlm_ray.corpus import Corpus, ingest
from rlm_ray.errors import UserError

CLI = [sys.executable, "-m", "rlm_ray.cli"]
RSS_LIMIT = 2 << 30          # the bound: stop the attack once it is clearly past it


def test_symlinks_out_of_the_source_root_are_skipped(tmp_path):
    outside = tmp_path / "host"
    (outside / "dir").mkdir(parents=True)
    (outside / "creds.txt").write_text("SECRET-TOKEN-1\n")
    (outside / "dir" / "key.txt").write_text("SECRET-TOKEN-2\n")
    root = tmp_path / "src"
    (root / "pkg").mkdir(parents=True)
    (root / "a.py").write_text("print('a')\n")
    (root / "pkg" / "b.py").write_text("print('b')\n")
    (root / "creds.txt").symlink_to(outside / "creds.txt")          # a file outside
    (root / "linked").symlink_to(outside / "dir")                   # a folder outside
    (root / "pkg" / "up").symlink_to(root)                          # a loop back to the root
    (root / "dangling.txt").symlink_to(tmp_path / "missing")
    (root / "alias.py").symlink_to(root / "a.py")                   # inside: harmless, kept
    manifest = ingest([str(root)], str(tmp_path / "corpus"))
    corpus = Corpus.open(str(tmp_path / "corpus"))
    assert sorted(d["path"] for d in corpus.docs()) == ["a.py", "alias.py", "pkg/b.py"]
    assert manifest["skipped"] == {"symlink": 4}
    assert corpus.grep("SECRET-TOKEN") == []
    assert corpus.read("alias.py") == "print('a')\n"
    with pytest.raises(UserError):
        corpus.read("creds.txt")


def _escaped(name: str) -> str:
    """The expected document path, derived independently of the ingest code."""
    out = []
    for ch in name:
        control = unicodedata.category(ch) == "Cc" or ch == "\u202e"
        out.append((f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}") if control else ch)
    return "".join(out)


HOSTILE_NAMES = ["evil\n\x1b[31mred.txt", "bell\x07\x1b]52;c;aGk=\x07.md", "gnp\u202etxt.py", "plain.txt"]


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tree"])
def test_control_characters_in_names_are_escaped(tmp_path, kind):
    texts = {name: f"document {i}\n" for i, name in enumerate(HOSTILE_NAMES)}
    if kind == "zip":
        source = tmp_path / "names.zip"
        with zipfile.ZipFile(source, "w") as z:
            for name, text in texts.items():
                z.writestr(name, text)
    elif kind == "tar.gz":
        source = tmp_path / "names.tar.gz"
        with tarfile.open(source, "w:gz") as t:
            for name, text in texts.items():
                (tmp_path / "member").write_text(text)
                t.add(tmp_path / "member", arcname=name)
    else:
        source = tmp_path / "tree"
        source.mkdir()
        for name, text in texts.items():
            (source / name).write_text(text)
    ingest([str(source)], str(tmp_path / "corpus"))
    corpus = Corpus.open(str(tmp_path / "corpus"))
    paths = sorted(d["path"] for d in corpus.docs())
    assert paths == sorted(_escaped(n) for n in HOSTILE_NAMES)
    assert all(p.isprintable() for p in paths)
    for name, text in texts.items():
        assert corpus.read(_escaped(name)) == text


def test_archive_member_paths_cannot_climb(tmp_path):
    source = tmp_path / "climb.zip"
    with zipfile.ZipFile(source, "w") as z:
        z.writestr("../../etc/x.txt", "up\n")
        z.writestr("/abs/y.txt", "abs\n")
    ingest([str(source)], str(tmp_path / "corpus"))
    assert sorted(d["path"] for d in Corpus.open(str(tmp_path / "corpus")).docs()) == ["abs/y.txt", "etc/x.txt"]


def _zip_bomb(path: Path, members: int = 600, member_bytes: int = 1_900_000) -> int:
    """A small zip of many highly compressible text members, like the issue's
    3.8 MB zip of 600 x 1.9 MB: compressed once, written by hand (zipfile
    would deflate 1.1 GB). Returns the total uncompressed size."""
    line = b"all work and no play makes a dull zip bomb\n"
    data = (line * (member_bytes // len(line) + 1))[:member_bytes]
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = deflater.compress(data) + deflater.flush()
    crc = zlib.crc32(data)
    central, offset = [], 0
    with open(path, "wb") as out:
        for i in range(members):
            name = f"part-{i:04d}.txt".encode()
            fields = (20, 0, 8, 0, 0, crc, len(packed), len(data), len(name), 0)
            out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, *fields) + name + packed)
            central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, *fields, 0, 0, 0, 0, offset) + name)
            offset += 30 + len(name) + len(packed)
        directory = b"".join(central)
        out.write(directory)
        out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, members, members, len(directory), offset, 0))
    return members * member_bytes


def _sparse_tar(path: Path, total: int = 1 << 30, member_bytes: int = 1 << 20) -> int:
    """A plain 1 GiB tar written sparsely (headers only; the data are holes)."""
    with open(path, "wb") as out:
        at = 0
        for i in range(total // member_bytes):
            info = tarfile.TarInfo(f"doc-{i:05d}.txt")
            info.size = member_bytes
            out.seek(at)
            out.write(info.tobuf())
            at += 512 + member_bytes
        out.truncate(at + 1024)
    return total


def _run_bounded(args: list[str], timeout: float = 240) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS) of a CLI run, killed once it passes RSS_LIMIT."""
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, deadline = 0, time.monotonic() + timeout
    watched = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.Error:
            pass
        if peak > RSS_LIMIT or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"ingest passed {RSS_LIMIT >> 20} MB RSS or {timeout} s (peak {peak >> 20} MB)")
        time.sleep(0.05)
    return proc.returncode, proc.stderr.read(), peak


@pytest.mark.timeout(300)
@pytest.mark.parametrize("make", [_zip_bomb, _sparse_tar], ids=["zip-bomb", "1GiB-tar"])
def test_huge_archives_give_a_one_line_error_in_bounded_memory(tmp_path, make):
    archive = tmp_path / ("bomb.zip" if make is _zip_bomb else "big.tar")
    total = make(archive)
    assert total >= 1_000_000_000 and archive.stat().st_blocks * 512 < 16 << 20   # small on disk
    code, stderr, peak = _run_bounded(["ingest", str(archive), "--out", str(tmp_path / "corpus")])
    print(f"{archive.name}: {total / 1e9:.2f} GB uncompressed, ingest peak RSS {peak / 2**20:.0f} MB")
    assert code == 2
    assert stderr.startswith("rlm-ray: error:") and len(stderr.strip().splitlines()) == 1
    assert "uncompressed size exceeds" in stderr and "--max-archive-bytes" in stderr
    assert not (tmp_path / "corpus" / "manifest.json").exists()


def test_member_count_cap(tmp_path):
    source = tmp_path / "many.zip"
    with zipfile.ZipFile(source, "w") as z:
        for i in range(30):
            z.writestr(f"m{i}.txt", f"member {i}\n")
    with pytest.raises(UserError, match="more than 20 members"):
        ingest([str(source)], str(tmp_path / "corpus"), max_archive_members=20)
    manifest = ingest([str(source)], str(tmp_path / "corpus"), max_archive_members=30)
    assert manifest["documents"] == 30
