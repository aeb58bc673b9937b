"""Streaming, parallel ingest: Ray tasks write the same content-
hashed corpus as the in-process path, re-ingesting unchanged content rewrites
nothing, a failure mid-ingest leaves the old manifest byte-identical, and the
memory an ingest holds does not grow with the corpus."""
from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import pytest

from rlm_ray.corpus import Corpus, ingest
from rlm_ray.errors import UserError


@pytest.fixture(scope="module")
def ray_cluster(s3_endpoint):
    """The session's Ray if one runs, else a private one for this module, started
    the way ingest starts it (retried: a loaded machine can miss Ray's 30 s raylet
    window, which the session fixture does not retry)."""
    import ray

    from rlm_ray.corpus.parallel import start_ray

    owned = not ray.is_initialized()
    if owned:
        start_ray(2)
    yield ray
    if owned:
        ray.shutdown()


def shard_state(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}


def _backend(request, backend: str) -> dict:
    """Where `parallelism=2` runs: Ray when a cluster is up, else local processes,
    as ingest chooses. With the session's Ray up, the processes case names its
    backend (as a benchmark does) rather than being skipped."""
    import ray

    if backend == "ray":
        request.getfixturevalue("ray_cluster")
        return {}
    return {"backend": "processes"} if ray.is_initialized() else {}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", ["processes", "ray"], scope="module")  # processes first: no Ray yet
def test_parallel_ingest_matches_in_process_and_is_incremental(request, backend, stdlib_subset, tmp_path):
    where = _backend(request, backend)
    src = tmp_path / "src"
    shutil.copytree(stdlib_subset, src)
    local = ingest([str(src)], str(tmp_path / "local"), parallelism=1)
    spread = ingest([str(src)], str(tmp_path / "ray"), parallelism=2, **where)
    assert spread["ingest"]["parallelism"] == f"{backend}:2" and local["ingest"]["parallelism"] == "inline:1"
    assert [s["file"] for s in spread["shards"]] == [s["file"] for s in local["shards"]]
    assert spread["docs_file"] == local["docs_file"]     # the docs table's name is its content hash
    for key in ("documents", "chunks", "tokens", "bytes", "skipped", "n_buckets"):
        assert spread[key] == local[key]
    assert len(spread["shards"]) >= 3

    out = tmp_path / "ray"
    before = shard_state(out)
    again = ingest([str(src)], str(out), parallelism=2, **where)
    assert again["ingest"]["shards_written"] == 0 and shard_state(out) == before
    (src / "shlex.py").write_text((src / "shlex.py").read_text() + "\n# edited\n")
    changed = ingest([str(src)], str(out), parallelism=2, **where)
    assert changed["ingest"]["shards_written"] == 1 and changed["ingest"]["shards_deleted"] == 1
    assert Corpus.open(str(out)).read("shlex.py").endswith("# edited\n")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", ["processes", "ray"], scope="module")  # processes first: no Ray yet
def test_parallel_ingest_failure_keeps_the_old_manifest_byte_identical(request, backend, stdlib_subset,
                                                                      tmp_path):
    where = _backend(request, backend)
    src = tmp_path / "src"
    shutil.copytree(stdlib_subset, src)
    out = tmp_path / "corpus"
    ingest([str(src)], str(out), parallelism=2, **where)
    manifest_before = (out / "manifest.json").read_bytes()
    for name in ("fractions.py", "difflib.py"):
        (src / name).write_text((src / name).read_text() + "\n# changed\n")
    scratch = ingest([str(src)], str(tmp_path / "scratch"), parallelism=1)
    new_files = [s["file"] for s in scratch["shards"] if not (out / s["file"]).exists()]
    (out / new_files[0]).mkdir()     # squats a shard name: that worker's write fails
    with pytest.raises(UserError, match="cannot write") as err:
        ingest([str(src)], str(out), parallelism=2, **where)
    assert "\n" not in str(err.value)
    assert (out / "manifest.json").read_bytes() == manifest_before
    assert all((out / s["file"]).is_file() for s in json.loads(manifest_before)["shards"])


def _corpus(root: Path, files: int) -> Path:
    line = "the quick brown fox jumps over the lazy dog " * 9 + "\n"
    for i in range(files):
        (root / f"d{i // 50}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i // 50}" / f"f{i}.txt").write_text(f"file {i}\n" + line * 100)
    return root


def _text_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.txt"))


def _python_peak(src: Path, out: Path) -> int:
    tracemalloc.start()
    try:
        ingest([str(src)], str(out), parallelism=1)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.timeout(600)
def test_ingest_memory_does_not_grow_with_the_corpus(tmp_path):
    small = _corpus(tmp_path / "small", 40)       # ~1.6 MB
    big = _corpus(tmp_path / "big", 160)          # ~6.5 MB
    ingest([str(small)], str(tmp_path / "warm-up"), parallelism=1)   # lazy imports, tokenizer tables
    small_peak = _python_peak(small, tmp_path / "c-small")
    big_peak = _python_peak(big, tmp_path / "c-big")
    extra_text = _text_bytes(big) - _text_bytes(small)
    print(f"Python heap peak: {small_peak >> 10} KB for 40 files, {big_peak >> 10} KB for 160 files "
          f"({extra_text >> 10} KB more text)")
    # Holding the corpus would cost at least the extra text (x2 with its chunks) on top.
    assert big_peak < small_peak * 1.5
    assert big_peak - small_peak < extra_text / 2
