"""DuckDB connections over a corpus, confined to it.

Model-written SQL runs here, so each connection is locked down before any
query: views over the exact shard files, `allowed_paths` = those files and
the docs table only, `enable_external_access=false`, no extension
auto-install/-load, then `lock_configuration=true` so nothing can be switched
back. DuckDB would still let COPY write to an allowed path, so `check_sql`
adds a statement-level gate in front: one read-only SELECT, no secret or
setting introspection, no SQL evaluated from strings.

S3 goes through the httpfs build that ships on PyPI for DuckDB 1.4.4
(`duckdb-ext-httpfs`): DuckDB cannot download extensions offline.
"""
from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from collections.abc import Iterator, Sequence

import duckdb

from rlm_ray import storage
from rlm_ray.errors import UserError


class CorpusQueryError(UserError):
    """A corpus query was refused or failed; the message is DuckDB's or ours."""


# Functions that would reveal secrets/settings or evaluate SQL built at run
# time (which would bypass the check below). DuckDB still confines the rest.
DENIED_FUNCTIONS = frozenset({
    "duckdb_secrets", "which_secret", "duckdb_settings", "current_setting",
    "getenv", "getvariable", "query", "query_table",
})


def _extension_dir() -> str:
    spec = importlib.util.find_spec("duckdb_ext")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the duckdb-ext-httpfs package is missing; reinstall rlm-ray (`make bootstrap`)")
    # duckdb_ext is a namespace package: its __file__ is None, the search path is not.
    return os.path.join(list(spec.submodule_search_locations)[0], "extensions")


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _s3_secret_sql() -> str:
    s3 = storage.S3Settings.from_env()
    parts = [("TYPE", "s3"), ("REGION", _sql_str(s3.region)), ("URL_STYLE", "'path'")]
    if s3.access_key:
        parts += [("KEY_ID", _sql_str(s3.access_key)), ("SECRET", _sql_str(s3.secret_key or ""))]
    if s3.session_token:
        parts.append(("SESSION_TOKEN", _sql_str(s3.session_token)))
    if s3.endpoint:
        parts += [("ENDPOINT", _sql_str(s3.endpoint)), ("USE_SSL", "true" if s3.scheme == "https" else "false")]
    return "CREATE OR REPLACE SECRET corpus_s3 (" + ", ".join(f"{k} {v}" for k, v in parts) + ")"


def _create_s3_secret(con: duckdb.DuckDBPyConnection) -> None:
    s3 = storage.S3Settings.from_env()
    try:
        con.execute(_s3_secret_sql())
    except duckdb.Error as exc:
        # DuckDB echoes the statement in some errors: never let the keys through.
        message = str(exc).splitlines()[0]
        for value in (s3.access_key, s3.secret_key, s3.session_token):
            if value:
                message = message.replace(value, "***")
        raise UserError(f"cannot configure S3 access for DuckDB: {message}") from None


def connect(root: str, shard_uris: Sequence[str], docs_uri: str) -> duckdb.DuckDBPyConnection:
    """An in-memory database whose only reachable files are the corpus's."""
    con = duckdb.connect(":memory:", config={
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "extension_directory": _extension_dir(),
        # Spill files go to a private directory, not a `.tmp` in whatever the cwd is.
        "temp_directory": os.path.join(tempfile.gettempdir(), f"rlm-ray-duckdb-{os.getpid()}"),
    })
    if storage.is_s3(root):
        con.execute("LOAD httpfs")
        _create_s3_secret(con)
        # Repeated scans of the same shards are served from memory.
        con.execute("SET enable_external_file_cache = true")
        con.execute("SET enable_http_metadata_cache = true")
    con.execute("SET parquet_metadata_cache = true")
    con.execute(f"CREATE VIEW chunks AS SELECT * FROM read_parquet([{', '.join(map(_sql_str, shard_uris))}])")
    con.execute(f"CREATE VIEW docs AS SELECT * EXCLUDE (shard) FROM read_parquet({_sql_str(docs_uri)})")
    # Exactly the corpus's data files: not even its manifest or a neighbour object.
    readable = [u if storage.is_s3(u) else os.path.realpath(u) for u in [*shard_uris, docs_uri]]
    con.execute(f"SET allowed_paths = [{', '.join(map(_sql_str, readable))}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _function_names(node) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("function_name", "table_name") and isinstance(value, str):
                yield value.lower()
            else:
                yield from _function_names(value)
    elif isinstance(node, list):
        for item in node:
            yield from _function_names(item)


def check_sql(con: duckdb.DuckDBPyConnection, query: str) -> None:
    """Refuse anything but one read-only SELECT over the corpus."""
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:
        raise CorpusQueryError(str(exc).splitlines()[0]) from None
    if len(statements) != 1:
        raise CorpusQueryError(f"send exactly one SQL statement, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise CorpusQueryError(f"only read-only SELECT queries are allowed on the corpus, not {kind.name}")
    tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [query]).fetchone()[0])
    if tree.get("error"):
        raise CorpusQueryError(tree.get("error_message", "cannot parse the query"))
    denied = sorted(set(_function_names(tree)) & DENIED_FUNCTIONS)
    if denied:
        raise CorpusQueryError(f"function not allowed on the corpus: {', '.join(denied)}")
