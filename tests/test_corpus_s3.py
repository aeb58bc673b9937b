"""The corpus on S3 (a real moto server over HTTP): S3 sources, S3 output via
the CLI, grep equal to `grep -rn`, confinement to the corpus prefix, and the
handle inside a Ray task."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest

from fixtures.codebase import scan_lines, text_files
from rlm_ray import storage
from rlm_ray.corpus import Corpus, CorpusQueryError, ingest

CLI = [sys.executable, "-m", "rlm_ray.cli"]


def upload_tree(root: Path, uri: str) -> None:
    for p in root.rglob("*"):
        if p.is_file() and "__pycache__" not in p.parts:
            storage.write_bytes_atomic(storage.join(uri, p.relative_to(root).as_posix()), p.read_bytes())


def grep_rn(root: Path, pattern: str) -> set[tuple[str, int]]:
    """What GNU `grep -rnIiE` reports (text files only)."""
    run = subprocess.run(["grep", "-rnIiE", pattern, "."], cwd=root, capture_output=True, text=True,
                         errors="replace")
    assert run.returncode in (0, 1), run.stderr
    hits = set()
    for line in run.stdout.splitlines():
        path, number, _ = line.split(":", 2)
        hits.add((path.removeprefix("./"), int(number)))
    return hits


@pytest.fixture(scope="module")
def corpus_bucket(s3_endpoint) -> str:
    """One bucket for the module's shared corpus (ingesting once keeps the tests quick)."""
    import boto3

    name = f"corpus-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def s3_corpus(stdlib_subset, corpus_bucket) -> str:
    out = f"s3://{corpus_bucket}/x"
    run = subprocess.run([*CLI, "ingest", str(stdlib_subset), "--out", out, "--chunk-tokens", "800"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("ingested ") and "shards written" in run.stdout
    return out


@pytest.mark.timeout(300)
def test_cli_ingest_to_s3_then_grep_equals_grep_rn(s3_corpus, stdlib_subset):
    corpus = Corpus.open(s3_corpus)
    files = text_files(stdlib_subset)
    assert {d["path"] for d in corpus.docs()} == set(files)
    for pattern in (r"def (get|set)_\w+", r"raise ValueError", r"^import (re|os)$"):
        found = {(m["path"], m["line"]) for m in corpus.grep(pattern, limit=None)}
        assert found == grep_rn(stdlib_subset, pattern) == scan_lines(files, pattern)
        assert found
    assert corpus.read("json/scanner.py") == files["json/scanner.py"]
    assert corpus.sql("SELECT count(*) AS n FROM chunks").to_pylist()[0]["n"] == corpus.stats["chunks"]


@pytest.mark.timeout(300)
def test_s3_reingest_rewrites_nothing(s3_corpus, stdlib_subset):
    before = {e.relpath for e in storage.list_prefix(s3_corpus)}
    again = ingest([str(stdlib_subset)], s3_corpus, chunk_tokens=800)
    assert again["ingest"]["shards_written"] == 0 and again["ingest"]["shards_deleted"] == 0
    assert {e.relpath for e in storage.list_prefix(s3_corpus)} == before


@pytest.mark.timeout(300)
def test_s3_sql_is_confined_to_the_corpus_files(s3_corpus, corpus_bucket, s3_endpoint):
    s3_bucket = corpus_bucket
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=f"{s3_bucket}-other")
    client.put_object(Bucket=f"{s3_bucket}-other", Key="secret.csv", Body=b"a,b\n1,2\n")
    client.put_object(Bucket=s3_bucket, Key="elsewhere/secret.csv", Body=b"a,b\n1,2\n")
    corpus = Corpus.open(s3_corpus)
    for query in [f"SELECT * FROM read_csv('s3://{s3_bucket}-other/secret.csv')",
                  f"SELECT * FROM read_csv('s3://{s3_bucket}/elsewhere/secret.csv')",
                  f"SELECT * FROM read_text('{s3_corpus}/manifest.json')",
                  f"SELECT * FROM read_csv('{s3_corpus}/../elsewhere/secret.csv')",
                  f"SELECT * FROM read_text('{s3_endpoint}/{s3_bucket}/elsewhere/secret.csv')",
                  f"COPY (SELECT 1) TO '{s3_corpus}/shards/evil.parquet'",
                  "SELECT * FROM duckdb_secrets()",
                  "SELECT * FROM which_secret('s3://x/y', 's3')"]:
        with pytest.raises(CorpusQueryError) as err:
            corpus.sql(query)
        assert os.environ["AWS_SECRET_ACCESS_KEY"] not in str(err.value) or "testing" in query
    assert not storage.exists(f"{s3_corpus}/shards/evil.parquet")
    assert len(corpus.grep("import", limit=3)) == 3


def test_s3_secrets_and_view_definitions_never_reach_model_sql(s3_corpus, corpus_bucket, s3_endpoint):
    """The deny-list let SQL built from a string run: duckdb_secrets() through
    json_execute_serialized_sql showed the key id, endpoint and bucket, and
    duckdb_views().sql showed the shard URIs that context.stats hides."""
    corpus = Corpus.open(s3_corpus)
    leaks = [os.environ["AWS_ACCESS_KEY_ID"], s3_endpoint.split("//", 1)[1], corpus_bucket, "s3://"]
    for query in [
        "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT * FROM duckdb_secrets()'))",
        "SELECT * FROM json_execute_serialized_sql(json_serialize_sql("
        "'SELECT * FROM which_secret(''s3://x/y'', ''s3'')'))",
        "SELECT sql FROM duckdb_views()",
        "SELECT view_definition FROM information_schema.views",
        "SELECT pg_get_viewdef('chunks')",
        "SELECT current_setting('allowed_paths')",
        "SELECT * FROM duckdb_secrets()",
    ]:
        with pytest.raises(CorpusQueryError) as err:
            corpus.sql(query)
        assert "not allowed on the corpus" in str(err.value), (query, str(err.value))
        assert not any(leak in str(err.value) for leak in leaks[1:]), str(err.value)
    assert corpus.sql("SELECT count(*) AS n FROM docs").to_pylist()[0]["n"] == corpus.stats["documents"]


@pytest.mark.timeout(300)
def test_s3_prefix_and_s3_archive_sources(stdlib_subset, s3_bucket, tmp_path):
    src = f"s3://{s3_bucket}/src"
    upload_tree(stdlib_subset / "json", src)
    storage.write_bytes_atomic(f"{src}/.gitignore", b"tool.py\n")
    storage.write_bytes_atomic(f"{src}/blob.bin", b"\x00\x01\x02")
    out = tmp_path / "from-prefix"
    manifest = ingest([src], str(out))
    expected = set(text_files(stdlib_subset / "json")) - {"tool.py"} | {".gitignore"}
    assert {d["path"] for d in Corpus.open(str(out)).docs()} == expected
    assert manifest["skipped"] == {"ignored": 1, "binary": 1}

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(stdlib_subset / "email", arcname="email")
    storage.write_bytes_atomic(f"s3://{s3_bucket}/email.tar.gz", buf.getvalue())
    records = "".join(json.dumps({"id": f"n{i}", "text": f"note {i}\n"}) + "\n" for i in range(3))
    storage.write_bytes_atomic(f"s3://{s3_bucket}/notes.jsonl", records.encode())
    both = ingest([f"s3://{s3_bucket}/email.tar.gz", f"s3://{s3_bucket}/notes.jsonl"],
                  f"s3://{s3_bucket}/both")
    paths = {d["path"] for d in Corpus.open(f"s3://{s3_bucket}/both").docs()}
    email = {f"email/{p}" for p in text_files(stdlib_subset / "email")}
    assert paths == email | {"n0", "n1", "n2"} and both["documents"] == len(paths)


@pytest.mark.timeout(300)
def test_handle_travels_to_a_ray_task(ray_session, s3_corpus):
    ray = ray_session
    corpus = Corpus.open(s3_corpus)
    pattern = r"class \w+Error"

    @ray.remote(num_cpus=0)
    def remote_grep(c: Corpus):
        return os.getpid(), c.grep(pattern, limit=None), len(c)

    pid, matches, tokens = ray.get(remote_grep.remote(corpus), timeout=240)
    assert pid != os.getpid()
    assert matches == corpus.grep(pattern, limit=None) and tokens == len(corpus)


def test_missing_bucket_and_missing_corpus_are_user_errors(stdlib_subset, s3_endpoint):
    for args in (["ingest", str(stdlib_subset / "json"), "--out", "s3://no-such-bucket-zz/x"],):
        run = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)
        assert run.returncode == 2
        assert run.stderr.startswith("rlm-ray: error:") and "does not exist" in run.stderr
        assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    with pytest.raises(Exception, match="no corpus at"):
        Corpus.open("s3://no-such-bucket-zz/x")
