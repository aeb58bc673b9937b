"""A query worker: the process that runs a host's model-driven corpus calls
(`context.sql`, `grep`, `read`, `docs`, the document sequence's reads).

Started by `query_pool.QueryWorker` as `python -m rlm_ray.corpus.query_worker
MEMORY_MB`. Before DuckDB is even imported, the kernel caps this process's
data memory (RLIMIT_DATA: heap and private anonymous mappings, what DuckDB's
string values live in): a query that builds a value of gigabytes gets an
allocation failure here, or dies here, and the host that asked carries on.
The first frame names the corpus; then one request at a time, one reply each
(frames of `query_frames`). The worker exits when its stdin closes, when its
parent goes away, and after an allocation its memory cap refused (its heap
may be fragmented or half-released: a fresh worker is cheaper than doubt).
"""
from __future__ import annotations

import os
import resource
import sys
import threading
import time
from typing import Any

from rlm_ray.corpus.query_frames import WorkerGone, read_frame_blocking, write_frame

EXIT_MEMORY = 3          # exit status after a memory failure was reported
TABLE_BATCH_ROWS = 64    # rows serialised at a time while filling a reply up to its byte cap


def cap_memory(memory_mb: int) -> None:
    limit = memory_mb << 20
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def exit_with_parent(parent: int) -> None:
    """A worker never outlives the host that started it: a SIGKILLed host
    closes no pipe a busy worker would notice, so also watch who our parent is."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class TooLarge(Exception):
    pass


def table_payload(table, max_bytes: int, truncate: bool) -> tuple[bytes, int, bool]:
    """(Arrow IPC stream, rows in it, truncated?) of `table`'s first rows that fit
    in `max_bytes`; without `truncate`, TooLarge when the whole table does not fit."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    rows, truncated = 0, False
    with pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=TABLE_BATCH_ROWS):
            if sink.tell() + batch.serialize().size <= max_bytes:
                writer.write_batch(batch)
                rows += batch.num_rows
                continue
            if not truncate:
                raise TooLarge(table.nbytes)
            for i in range(batch.num_rows):      # the rows of this batch that still fit
                row = batch.slice(i, 1)
                if sink.tell() + row.serialize().size > max_bytes:
                    break
                writer.write_batch(row)
                rows += 1
            truncated = True
            break
    return sink.getvalue().to_pybytes(), rows, truncated


def handle(corpus, request: dict[str, Any], scopes=None) -> tuple[dict[str, Any], bytes]:
    """One request -> (reply, payload). Raises what the call raised. A request
    with a `scope` runs on that scope's own database (corpus/scoped.py)."""
    import json

    method, args = request["method"], request.get("args") or {}
    timeout_s, max_bytes = float(request["timeout_s"]), int(request["max_bytes"])
    if args.get("scope"):
        from rlm_ray.corpus.scoped import ScopeCache, scope_counts

        scopes = scopes if scopes is not None else ScopeCache(corpus)
        corpus = scopes.get([str(g) for g in args["scope"]], timeout_s)
        if method == "scope":
            return {"value": scope_counts(corpus)}, b""
    if method in ("sql", "table"):
        if method == "sql":
            table = corpus.sql(args["query"], limit=args.get("limit"), timeout_s=timeout_s)
        else:
            table = corpus._internal_table(args["query"], args.get("params") or [], timeout_s)
        try:
            payload, rows, truncated = table_payload(table, max_bytes, truncate=method == "sql")
        except TooLarge as exc:
            raise TooLarge(f"a result of {exc.args[0] / 2**20:.1f} MB is over the "
                           f"{max_bytes / 2**20:.0f} MB one corpus call may return") from None
        return {"rows": rows, "truncated": truncated}, payload
    if method == "grep":
        value: Any = corpus.grep(args["pattern"], limit=args.get("limit"), regex=args["regex"],
                                 case=args["case"], timeout_s=timeout_s)
    elif method == "read":
        text = corpus.read(args["doc"], args["start"], args.get("end"), timeout_s=timeout_s)
        value = {"text": text[:int(args["max_chars"])], "chars": len(text)}
    elif method == "docs":
        value = corpus.docs(limit=args.get("limit"))
    else:
        raise ValueError(f"unknown method {method!r}")
    size = len(json.dumps(value, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise TooLarge(f"a result of {size / 2**20:.1f} MB is over the {max_bytes / 2**20:.0f} MB "
                       f"one corpus call may return")
    return {"value": value}, b""


def serve(in_fd: int, out_fd: int) -> int:
    from rlm_ray.corpus.duck import CorpusMemoryError, DuckLimits
    from rlm_ray.corpus.handle import Corpus
    from rlm_ray.corpus.scoped import ScopeCache
    from rlm_ray.errors import UserError

    opening, _ = read_frame_blocking(in_fd)
    corpus = Corpus(opening["uri"], opening["manifest"], DuckLimits(**opening["limits"]))
    scopes = ScopeCache(corpus)
    write_frame(out_fd, {"ready": True, "pid": os.getpid()})
    while True:
        try:
            request, _ = read_frame_blocking(in_fd)
        except WorkerGone:
            return 0
        try:
            reply, payload = handle(corpus, request, scopes)
        except (CorpusMemoryError, MemoryError) as exc:   # pyarrow's ArrowMemoryError included
            if isinstance(exc, CorpusMemoryError) and not exc.by_process:
                # DuckDB's buffer manager refused: it accounted for that memory, nothing leaked.
                reply, payload = {"error": str(exc), "kind": "memory", "limit": "duckdb"}, b""
            else:
                write_frame(out_fd, {"error": str(exc) or "out of memory", "kind": "memory",
                                     "limit": "process"})
                return EXIT_MEMORY
        except (UserError, TooLarge) as exc:
            reply, payload = {"error": str(exc), "kind": "query"}, b""
        except Exception as exc:  # noqa: BLE001 - the host reports it; this worker stays usable
            reply, payload = {"error": f"{type(exc).__name__}: {exc}", "kind": "internal"}, b""
        write_frame(out_fd, reply, payload)


def main(argv: list[str]) -> int:
    cap_memory(int(argv[1]))
    exit_with_parent(os.getppid())
    # Frames travel on private copies of stdin/stdout; fd 1 becomes stderr so a
    # stray print (ours or a library's) can never corrupt a frame.
    in_fd, out_fd = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        return serve(in_fd, out_fd)
    except WorkerGone:
        return 0


if __name__ == "__main__":
    # No interpreter teardown: the host reaps this process and removes its spill folder.
    os._exit(main(sys.argv))
