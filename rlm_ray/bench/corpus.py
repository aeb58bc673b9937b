"""`rlm-ray bench corpus`: ingest the CPython stdlib (~10M tokens) locally and
to S3 (a moto server this command starts on loopback), then time queries on
fresh (cold) and reused (warm) handles. Prints figures; asserts nothing."""
from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rlm_ray.corpus.handle import Corpus
from rlm_ray.corpus.ingestion import ingest
from rlm_ray.errors import UserError

STDLIB_EXCLUDE = ["site-packages/", "__pycache__/", "*.pyc"]
REGEX = r"def\s+__\w+__\s*\("
GREP = r"class \w+Error\("
READ_DOC = "typing.py"   # a large module (~3,400 lines); the biggest document if absent
# The product's targets for corpus queries, on a 2-core machine.
TARGETS = {"regex scan": "<= 300 ms local, <= 1 s warm S3", "read doc": "<= 50 ms"}


@dataclass
class Timing:
    cold: float
    warm: float


def _median(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def pick_read_doc(uri: str) -> str:
    docs = Corpus.open(uri).docs()
    paths = {d["path"] for d in docs}
    return READ_DOC if READ_DOC in paths else max(docs, key=lambda d: d["bytes"])["path"]


def _queries(read_doc: str) -> dict[str, Callable[[Corpus], object]]:
    return {
        "regex scan": lambda c: c.sql(
            f"SELECT count(*) FROM chunks WHERE regexp_matches(text, '(?i){REGEX}')").to_pylist(),
        "grep (limit 100)": lambda c: c.grep(GREP, limit=100),
        "read doc": lambda c: c.read(read_doc),
        "count(*)": lambda c: c.sql("SELECT count(*) FROM chunks").to_pylist(),
    }


def time_queries(uri: str, read_doc: str, repeats: int) -> tuple[float, dict[str, Timing]]:
    """Cold = first run on a freshly opened handle whose DuckDB is connected
    (nothing cached); warm = median of `repeats` further runs on it."""
    results: dict[str, Timing] = {}
    t = time.perf_counter()
    Corpus.open(uri).sql("SELECT 1")
    connect_s = time.perf_counter() - t
    for name, query in _queries(read_doc).items():
        corpus = Corpus.open(uri)
        corpus.sql("SELECT 1")
        corpus.docs()
        t = time.perf_counter()
        query(corpus)
        cold = time.perf_counter() - t
        results[name] = Timing(cold, _median(lambda: query(corpus), repeats))
        corpus.close()
    return connect_s, results


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_s3() -> Iterator[str]:
    """A moto S3 server on loopback with dummy credentials; yields a bucket URI."""
    exe = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    if not os.path.exists(exe):
        raise UserError("moto_server not found: install the dev extras (`pip install -e '.[dev]'`) or pass --no-s3")
    port = _free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN")}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise UserError("moto_server did not start") from None
                time.sleep(0.1)
        os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                           "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
        os.environ.pop("AWS_SESSION_TOKEN", None)
        import pyarrow.fs as pafs

        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        pafs.S3FileSystem(access_key="bench", secret_key="bench", region="us-east-1", scheme="http",
                          endpoint_override=f"127.0.0.1:{port}",
                          allow_bucket_creation=True).create_dir(bucket)
        yield f"s3://{bucket}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class IngestRun:
    wall: float
    cpu: float    # all threads of this process: a fair figure on a shared machine

    def cell(self, tokens: int) -> str:
        return f"{self.wall:.1f} s ({tokens / self.wall / 1e6:.2f} M tok/s), CPU {self.cpu:.1f} s"


def _ingest_timed(stdlib: str, out: str) -> tuple[dict, IngestRun]:
    wall, cpu = time.perf_counter(), time.process_time()
    manifest = ingest([stdlib], out, exclude=STDLIB_EXCLUDE, name="stdlib")
    return manifest, IngestRun(time.perf_counter() - wall, time.process_time() - cpu)


def run_bench(stdlib: str | None, use_s3: bool, work: str, repeats: int,
              copies: int = 10, workers: int = 2) -> int:
    from rich.console import Console
    from rich.table import Table

    stdlib = stdlib or sysconfig.get_paths()["stdlib"]
    if not os.path.isdir(stdlib):
        raise UserError(f"--stdlib {stdlib} is not a directory")
    console = Console(width=max(120, Console().width))
    load_before = os.getloadavg()[0]
    if copies > 0:
        from rlm_ray.bench.corpus_scale import run_scale

        run_scale(console, stdlib, work, copies, workers)
    local_out = os.path.join(work, "local")
    shutil.rmtree(local_out, ignore_errors=True)   # a full ingest, not an incremental no-op
    console.print(f"ingesting {stdlib} -> {local_out} ...")
    manifest, local_ingest = _ingest_timed(stdlib, local_out)
    read_doc = pick_read_doc(local_out)
    local_connect, local = time_queries(local_out, read_doc, repeats)
    s3_ingest = s3_connect = None
    s3: dict[str, Timing] = {}
    if use_s3:
        with local_s3() as bucket:
            console.print(f"ingesting {stdlib} -> {bucket}/stdlib (moto on loopback) ...")
            _, s3_ingest = _ingest_timed(stdlib, f"{bucket}/stdlib")
            s3_connect, s3 = time_queries(f"{bucket}/stdlib", read_doc, repeats)

    tokens = manifest["tokens"]
    console.print(f"corpus: {manifest['documents']:,} documents, {manifest['chunks']:,} chunks, "
                  f"{tokens:,} tokens ({manifest['tokenizer']}), {len(manifest['shards'])} shards, "
                  f"skipped {manifest['skipped']}, non-UTF-8 replaced {manifest['non_utf8_replaced']}")
    table = Table(title=f"rlm-ray bench corpus ({os.cpu_count()} CPUs)")
    for column in ("step", "local", "S3 cold", "S3 warm", "target"):
        table.add_column(column, justify="right" if column != "step" else "left")
    ms = lambda s: "-" if s is None else f"{s * 1000:.1f} ms"  # noqa: E731
    table.add_row("ingest", local_ingest.cell(tokens), "-" if s3_ingest is None else s3_ingest.cell(tokens),
                  "", "<= 60 s")
    table.add_row("open + connect", ms(local_connect), ms(s3_connect), "", "")
    for name, timing in local.items():
        target = TARGETS.get(name, "")
        cold_s3 = s3[name].cold if name in s3 else None
        warm_s3 = s3[name].warm if name in s3 else None
        table.add_row(name, f"{ms(timing.warm)} (cold {ms(timing.cold)})", ms(cold_s3), ms(warm_s3), target)
    console.print(table)
    console.print(f"queries: regex {REGEX!r} (case-insensitive), grep {GREP!r}, read {read_doc!r} "
                  f"(whole document); local column = warm median of {repeats} (cold in brackets)")
    # The machine may be shared: say how busy it was, so figures can be read fairly.
    console.print(f"1-min load average: {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end "
                  f"({os.cpu_count()} CPUs)")
    return 0
