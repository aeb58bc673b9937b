"""Ingest over real files: skips by reason, chunk rows traceable to file lines,
archives and document tables, incremental re-ingest, crash safety, bad input."""
from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fixtures.codebase import FILES, KEPT, MAX_FILE_BYTES, SKIPPED, make_codebase
from rlm_ray.corpus import Corpus, ingest
from rlm_ray.corpus.chunking import chunk_text
from rlm_ray.errors import UserError
from rlm_ray.tokens import count_tokens


def chunk_rows(out: Path) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    rows = []
    for shard in manifest["shards"]:
        rows.extend(pq.read_table(out / shard["file"]).to_pylist())
    return rows


def by_doc(rows: list[dict]) -> dict[str, list[dict]]:
    docs: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: (r["path"], r["chunk_id"])):
        docs.setdefault(row["path"], []).append(row)
    return docs


def shard_state(out: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}


@pytest.fixture
def codebase(tmp_path) -> Path:
    return make_codebase(tmp_path / "code")


def test_codebase_kept_skipped_and_rows_trace_back_to_files(codebase, tmp_path):
    out = tmp_path / "corpus"
    manifest = ingest([str(codebase)], str(out), chunk_tokens=64, max_file_bytes=MAX_FILE_BYTES)
    assert manifest["skipped"] == SKIPPED
    assert manifest["non_utf8_replaced"] == 1
    docs = by_doc(chunk_rows(out))
    assert sorted(docs) == sorted(KEPT)
    assert manifest["documents"] == len(KEPT)
    assert manifest["chunks"] == sum(len(c) for c in docs.values())
    assert manifest["tokens"] == sum(r["n_tokens"] for c in docs.values() for r in c)
    assert len(docs["src/big_module.py"]) > 10   # really split
    for path, chunks in docs.items():
        data = FILES[path]
        text = data.decode("utf-8", errors="replace")
        assert "".join(c["text"] for c in chunks) == text          # reassembles exactly
        assert [c["chunk_id"] for c in chunks] == list(range(len(chunks)))
        assert {c["sha256"] for c in chunks} == {hashlib.sha256(data).hexdigest()}
        lines = text.split("\n")
        for c in chunks:
            assert c["n_tokens"] == count_tokens(c["text"])
            assert c["n_tokens"] <= 64 or c["start_line"] == c["end_line"]
            # Each chunk is exactly its file lines start_line..end_line.
            expected = "\n".join(lines[c["start_line"] - 1:c["end_line"]])
            assert c["text"].rstrip("\n") == expected.rstrip("\n")
    assert "\ufffd" in docs["latin1.txt"][0]["text"]


def test_shards_are_zstd_with_small_row_groups_and_manifest_has_the_numbers(codebase, tmp_path):
    out = tmp_path / "corpus"
    manifest = ingest([str(codebase)], str(out), chunk_tokens=16, max_file_bytes=MAX_FILE_BYTES)
    for key in ("schema_version", "shards", "documents", "chunks", "tokens", "bytes", "skipped",
                "source", "created_at", "docs_file"):
        assert key in manifest
    assert manifest["source"] == [str(codebase)]
    assert manifest["bytes"] == sum(len(FILES[p]) for p in KEPT)
    for shard in manifest["shards"]:
        meta = pq.ParquetFile(out / shard["file"]).metadata
        assert meta.row_group(0).column(0).compression == "ZSTD"
        assert all(meta.row_group(i).num_rows <= 64 for i in range(meta.num_row_groups))
    docs = pq.read_table(out / manifest["docs_file"]).to_pylist()
    assert [d["path"] for d in docs] == sorted(KEPT)
    readme = next(d for d in docs if d["path"] == "README.md")
    assert readme["n_lines"] == 4   # no trailing newline: the last line still counts


def _archive(codebase: Path, dest: Path, kind: str) -> Path:
    if kind == "zip":
        with zipfile.ZipFile(dest, "w") as z:
            for rel in FILES:
                z.write(codebase / rel, rel)
        return dest
    with tarfile.open(dest, "w:gz" if dest.name.endswith("gz") else "w") as t:
        t.add(codebase, arcname=".")   # members like ./src/app.py
    return dest


@pytest.mark.parametrize("name", ["code.tar", "code.tar.gz", "code.zip"])
def test_archives_ingest_like_the_directory(codebase, tmp_path, name):
    archive = _archive(codebase, tmp_path / name, "zip" if name.endswith("zip") else "tar")
    out = tmp_path / "corpus"
    manifest = ingest([str(archive)], str(out), chunk_tokens=64, max_file_bytes=MAX_FILE_BYTES)
    assert sorted(by_doc(chunk_rows(out))) == sorted(KEPT)
    assert manifest["skipped"] == SKIPPED


def test_jsonl_and_parquet_document_tables(tmp_path):
    records = [{"id": f"doc-{i}", "text": f"record {i} | label: {'ab'[i % 2]}\n" * (i + 1)} for i in range(5)]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    table = tmp_path / "docs.parquet"
    pq.write_table(pa.Table.from_pylist([{"path": f"p/{r['id']}.txt", "text": r["text"]} for r in records]), table)
    for source, paths in ((jsonl, [r["id"] for r in records]),
                          (table, [f"p/{r['id']}.txt" for r in records])):
        out = tmp_path / f"corpus-{source.suffix[1:]}"
        ingest([str(source)], str(out))
        docs = by_doc(chunk_rows(out))
        assert sorted(docs) == sorted(paths)
        corpus = Corpus.open(str(out))
        for path, record in zip(paths, records):
            assert corpus.read(path) == record["text"]


def test_several_sources_prefix_paths_only_when_they_collide(tmp_path):
    a, b, c = (tmp_path / n for n in ("alpha", "beta", "gamma"))
    for root, name in ((a, "same.py"), (b, "same.py"), (c, "other.py")):
        root.mkdir()
        (root / name).write_text(f"# {root.name}\n")
    ingest([str(a), str(c)], str(tmp_path / "no-clash"))
    assert sorted(by_doc(chunk_rows(tmp_path / "no-clash"))) == ["other.py", "same.py"]
    ingest([str(a), str(b)], str(tmp_path / "clash"))
    docs = by_doc(chunk_rows(tmp_path / "clash"))
    assert sorted(docs) == ["alpha/same.py", "beta/same.py"]
    assert docs["beta/same.py"][0]["text"] == "# beta\n"


def test_incremental_reingest_rewrites_only_changed_shards(stdlib_subset, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(stdlib_subset, src)
    out = tmp_path / "corpus"
    first = ingest([str(src)], str(out))
    assert len(first["shards"]) >= 3
    before = shard_state(out)
    again = ingest([str(src)], str(out))
    assert again["ingest"]["shards_written"] == 0
    assert again["ingest"]["shards_kept"] == len(first["shards"])
    assert shard_state(out) == before                      # same files, never rewritten
    assert again["tokens"] == first["tokens"]

    (src / "textwrap.py").write_text((src / "textwrap.py").read_text() + "\n# an edit\n")
    changed = ingest([str(src)], str(out))
    assert changed["ingest"]["shards_written"] == 1 and changed["ingest"]["shards_deleted"] == 1
    after = shard_state(out)
    assert len(set(after) - set(before)) == 1 and len(set(before) - set(after)) == 1
    assert {k: v for k, v in after.items() if k in before} == {k: v for k, v in before.items() if k in after}
    assert Corpus.open(str(out)).read("textwrap.py").endswith("# an edit\n")

    (src / "shlex.py").unlink()
    dropped = ingest([str(src)], str(out))
    paths = {d["path"] for d in Corpus.open(str(out)).docs()}
    assert "shlex.py" not in paths and "textwrap.py" in paths
    assert dropped["documents"] == first["documents"] - 1
    referenced = {Path(s["file"]).name for s in dropped["shards"]}
    assert set(shard_state(out)) == referenced              # the old shard is gone
    assert [p.name for p in out.glob("docs-*")] == [dropped["docs_file"]]


def test_crash_mid_ingest_keeps_the_previous_corpus(stdlib_subset, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(stdlib_subset, src)
    out = tmp_path / "corpus"
    ingest([str(src)], str(out))
    manifest_before = (out / "manifest.json").read_bytes()
    old_text = (src / "fractions.py").read_text()
    for name in ("fractions.py", "difflib.py", "shlex.py"):
        (src / name).write_text((src / name).read_text() + "\n# changed\n")
    # Where the new shards will go (names are content hashes)...
    scratch = ingest([str(src)], str(tmp_path / "scratch"))
    new_files = [s["file"] for s in scratch["shards"] if not (out / s["file"]).exists()]
    assert new_files
    # ...and a directory squatting one of those names makes that write fail midway.
    (out / new_files[-1]).mkdir()
    with pytest.raises(UserError, match="cannot write"):
        ingest([str(src)], str(out))
    assert (out / "manifest.json").read_bytes() == manifest_before
    corpus = Corpus.open(str(out))
    assert corpus.read("fractions.py") == old_text
    assert all((out / s["file"]).is_file() for s in corpus.manifest["shards"])
    (out / new_files[-1]).rmdir()
    done = ingest([str(src)], str(out))
    assert Corpus.open(str(out)).read("fractions.py").endswith("# changed\n")
    assert set(shard_state(out)) == {Path(s["file"]).name for s in done["shards"]}  # litter collected


def test_corpus_inside_its_source_does_not_ingest_itself(codebase):
    out = codebase / "corpus"
    first = ingest([str(codebase)], str(out), max_file_bytes=MAX_FILE_BYTES)
    again = ingest([str(codebase)], str(out), max_file_bytes=MAX_FILE_BYTES)
    assert again["documents"] == first["documents"] == len(KEPT)


def test_a_single_huge_line_is_split_by_characters():
    line = "word " * 3000
    chunks = chunk_text("head\n" + line + "\ntail\n", 100)
    assert "".join(c.text for c in chunks) == "head\n" + line + "\ntail\n"
    middle = [c for c in chunks if c.start_line == c.end_line == 2]
    assert len(middle) > 10 and all(count_tokens(c.text) <= 150 for c in middle)


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "no documents to ingest"),
    (lambda d: (d / "a.bin").write_bytes(b"\x00\x01"), "binary=1"),
    (lambda d: (d / "x.jsonl").write_text('{"id": 1, "text": "ok"}\n{broken\n'), "line 2 is not valid JSON"),
    (lambda d: (d / "x.jsonl").write_text('{"id": 1, "body": "no text"}\n'), "needs a 'path' or 'id'"),
    (lambda d: (d / "x.jsonl").write_text('{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n'), "duplicate document path"),
    (lambda d: pq.write_table(pa.table({"body": ["x"]}), d / "x.parquet"), "needs columns 'text'"),
    (lambda d: (d / "x.parquet").write_bytes(b"not parquet"), "not a readable Parquet file"),
    (lambda d: (d / "x.tar.gz").write_bytes(b"not a tarball"), "cannot read source"),
    (lambda d: (d / "x.docx").write_bytes(b"??"), "unsupported source"),
])
def test_bad_sources_are_user_errors(tmp_path, setup, message):
    src = tmp_path / "src"
    src.mkdir()
    setup(src)
    files = list(src.iterdir())
    source = str(files[0]) if files and files[0].suffix != ".bin" else str(src)
    with pytest.raises(UserError, match=message):
        ingest([source], str(tmp_path / "out"))
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_bad_arguments_are_user_errors(codebase, tmp_path):
    (tmp_path / "file").write_text("x")
    cases = [
        (dict(sources=[str(tmp_path / "missing")], out=str(tmp_path / "o")), "source not found"),
        (dict(sources=[str(codebase)], out=str(tmp_path / "file")), "is a file"),
        (dict(sources=[], out=str(tmp_path / "o")), "at least one source"),
        (dict(sources=[str(codebase)], out=str(tmp_path / "o"), chunk_tokens=0), "chunk-tokens"),
    ]
    for kwargs, message in cases:
        with pytest.raises(UserError, match=message):
            ingest(**kwargs)


def test_token_counts_are_real_and_treat_special_tokens_as_text():
    from rlm_ray.tokens import count_tokens_batch, encoder

    texts = ["hello world", "<|endoftext|> is plain text here", "def f(x):\n    return x\n" * 50, ""]
    assert count_tokens_batch(texts) == [count_tokens(t) for t in texts]
    assert count_tokens(texts[0]) == 2 and count_tokens("") == 0
    assert count_tokens(texts[1]) == len(encoder().encode(texts[1], disallowed_special=()))


def test_excluded_folders_are_not_walked(tmp_path):
    """`--exclude vendor/` prunes the folder: nothing below it is listed (a FIFO
    there would otherwise count as `special`), and it counts once as excluded.
    With a `!` pattern present every file is matched instead (the pattern may
    re-include one)."""
    import os

    src = tmp_path / "src"
    (src / "vendor" / "deep").mkdir(parents=True)
    (src / "app.py").write_text("print('app')\n")
    for i in range(5):
        (src / "vendor" / "deep" / f"lib{i}.py").write_text(f"x = {i}\n")
    os.mkfifo(src / "vendor" / "deep" / "pipe")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref: refs/heads/main\n")

    manifest = ingest([str(src)], str(tmp_path / "c1"), exclude=["vendor/"])
    assert manifest["documents"] == 1 and manifest["skipped"] == {"excluded": 1}

    manifest = ingest([str(src)], str(tmp_path / "c2"), exclude=["vendor/", "!vendor/deep/lib0.py"])
    # Per-file matching: the FIFO is seen (and refused), lib0.py is re-included.
    assert manifest["documents"] == 2
    assert manifest["skipped"] == {"excluded": 4, "special": 1}


def test_the_package_exports_stay_functions_whatever_was_imported_first():
    """`from rlm_ray.corpus import ingest` must give the function even after a
    submodule was imported directly: a submodule named like an export would
    replace the package's attribute with itself (it once did, for `ingest`)."""
    import importlib
    import pkgutil
    import types

    import rlm_ray.corpus as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    for name in package.__all__:
        assert not isinstance(getattr(package, name), types.ModuleType), name
    assert callable(importlib.import_module("rlm_ray.corpus").ingest)
