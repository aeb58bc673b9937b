"""The statement gate for model-written SQL: an allow-list over DuckDB's own
parse tree.

`json_serialize_sql` parses exactly as the engine will (comments, quoting,
dialect quirks included) and refuses anything but SELECT. The tree is then
walked: every query node, table reference and expression must be of a kind
listed here; tables are only `chunks`, `docs` or a CTE in scope; functions
come from `sql_functions`. The row cap is a LIMIT node wrapped around the
validated tree; DuckDB prints that tree back as SQL (`json_deserialize_sql`,
no comments, canonical quoting), and that text is parsed and checked again,
cap included, before it runs: what executes is exactly what was checked.
(`json_execute_serialized_sql` would run the tree directly, but in a nested
connection that `interrupt()` cannot reach.)
"""
from __future__ import annotations

import copy
import json
import re
from typing import Any

import duckdb

from rlm_ray.corpus.sql_amplifiers import NO_LOCATION as _NO_LOCATION
from rlm_ray.corpus.sql_amplifiers import guard_value_sizes
from rlm_ray.corpus.sql_functions import ALLOWED_FUNCTIONS, ALLOWED_TABLE_FUNCTIONS
from rlm_ray.errors import UserError

CORPUS_TABLES = frozenset({"chunks", "docs"})
QUERY_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})
TABLE_REFS = frozenset({"BASE_TABLE", "SUBQUERY", "JOIN", "TABLE_FUNCTION", "EXPRESSION_LIST",
                        "EMPTY", "SHOW_REF", "PIVOT"})
EXPRESSIONS = frozenset({"CONSTANT", "COLUMN_REF", "FUNCTION", "OPERATOR", "COMPARISON", "CONJUNCTION",
                         "CASE", "CAST", "BETWEEN", "STAR", "SUBQUERY", "WINDOW", "LAMBDA", "COLLATE",
                         "POSITIONAL_REFERENCE", "LAMBDA_REF"})
# DESCRIBE <query> / SUMMARIZE <query>: their inner query is checked like any other.
SHOW_KINDS = frozenset({"DESCRIBE", "SUMMARY"})
# Names that would resolve to DuckDB's catalog views if a CTE of that name were out of scope.
_CATALOG_PREFIXES = ("duckdb_", "pg_", "sqlite_", "information_schema")


class CorpusQueryError(UserError):
    """A corpus query was refused or failed; the message is DuckDB's or ours."""


def parse(con: duckdb.DuckDBPyConnection, query: str) -> dict:
    """DuckDB's tree of one SELECT statement, or a clear refusal."""
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [query]).fetchone()[0])
    except duckdb.Error as exc:
        raise CorpusQueryError(str(exc).strip().splitlines()[0]) from None
    if tree.get("error"):
        message = tree.get("error_message") or "cannot parse the query"
        if "Only SELECT" in message:
            message = "only read-only SELECT queries are allowed on the corpus"
        raise CorpusQueryError(message.strip().splitlines()[0])
    statements = tree["statements"]
    if len(statements) != 1:
        raise CorpusQueryError(f"send exactly one SQL statement, got {len(statements)}")
    return statements[0]


def check(statement: dict) -> None:
    """Raise CorpusQueryError unless every part of the statement is allowed."""
    if statement.get("named_param_map"):
        raise CorpusQueryError("query parameters ($1, ?) are not allowed on the corpus")
    _Walker().query(statement["node"], frozenset())


def executable(con: duckdb.DuckDBPyConnection, query: str, max_rows: int | None,
               max_value_size: int) -> str:
    """The SQL text to run for model `query`: checked, its amplifying calls size-guarded,
    capped at `max_rows`, then re-checked."""
    statement = parse(con, query)
    check(statement)
    statement = {**statement, "node": guard_value_sizes(statement["node"], max_value_size)}
    if max_rows is None:
        tree = json.dumps({"error": False, "statements": [statement]})
    else:
        tree = _capped(statement, max_rows)
    text = con.execute("SELECT json_deserialize_sql(?::JSON)", [tree]).fetchone()[0]
    again = parse(con, text)
    check(again)
    if max_rows is not None and not _is_capped(again["node"], max_rows):
        raise CorpusQueryError("cannot apply the row cap to this query; simplify it")
    return text


def _is_capped(node: dict, max_rows: int) -> bool:
    modifiers = node.get("modifiers") or []
    return (node.get("type") == "SELECT_NODE" and len(modifiers) == 1
            and modifiers[0].get("type") == "LIMIT_MODIFIER" and modifiers[0].get("offset") is None
            and (modifiers[0].get("limit") or {}).get("class") == "CONSTANT"
            and modifiers[0]["limit"]["value"].get("value") == max_rows
            and (node.get("from_table") or {}).get("type") == "SUBQUERY"
            and not node.get("where_clause") and not node.get("group_expressions")
            and not node.get("having") and not node.get("qualify")
            and not node.get("cte_map", {}).get("map"))


def _capped(statement: dict, max_rows: int) -> str:
    """The statement wrapped as `SELECT * FROM (<statement>) LIMIT max_rows`, serialized."""
    node = {
        "type": "SELECT_NODE", "modifiers": [{"type": "LIMIT_MODIFIER", "offset": None, "limit": {
            "class": "CONSTANT", "type": "VALUE_CONSTANT", "alias": "", "query_location": _NO_LOCATION,
            "value": {"type": {"id": "BIGINT", "type_info": None}, "is_null": False, "value": int(max_rows)}}}],
        "cte_map": {"map": []},
        "select_list": [{"class": "STAR", "type": "STAR", "alias": "", "query_location": _NO_LOCATION,
                         "relation_name": "", "exclude_list": [], "replace_list": [], "columns": False,
                         "expr": None, "qualified_exclude_list": [], "rename_list": []}],
        "from_table": {"type": "SUBQUERY", "alias": "_capped", "sample": None,
                       "query_location": _NO_LOCATION, "column_name_alias": [],
                       "subquery": {"node": copy.deepcopy(statement["node"]), "named_param_map": []}},
        "where_clause": None, "group_expressions": [], "group_sets": [],
        "aggregate_handling": "STANDARD_HANDLING", "having": None, "sample": None, "qualify": None,
    }
    return json.dumps({"error": False, "statements": [{"node": node, "named_param_map": []}]})



def _refuse(what: str) -> None:
    raise CorpusQueryError(f"{what} is not allowed on the corpus (allowed: SELECT over the "
                           "`chunks` and `docs` views with ordinary functions)")


class _Walker:
    """Walks DuckDB's JSON tree; `scope` is the set of CTE names visible at a node."""

    def query(self, node: Any, scope: frozenset[str]) -> None:
        if not isinstance(node, dict) or node.get("type") not in QUERY_NODES:
            _refuse(f"query node {node.get('type') if isinstance(node, dict) else node!r}")
        # CTEs: each sees the ones before it (and itself when recursive, via cte_name).
        for entry in node.get("cte_map", {}).get("map", []):
            name = str(entry["key"]).lower()
            if name.startswith(_CATALOG_PREFIXES):
                _refuse(f"CTE name {name!r}")
            self.any(entry["value"], scope)
            scope = scope | {name}
        if node["type"] in ("RECURSIVE_CTE_NODE", "CTE_NODE") and node.get("cte_name"):
            scope = scope | {str(node["cte_name"]).lower()}
        for key, value in node.items():
            if key != "cte_map":
                self.any(value, scope)

    def any(self, value: Any, scope: frozenset[str]) -> None:
        if isinstance(value, list):
            for item in value:
                self.any(item, scope)
            return
        if not isinstance(value, dict):
            return
        kind = value.get("type") if isinstance(value.get("type"), str) else None
        if "class" in value:
            self.expression(value, scope)
            if value["class"] == "CONSTANT":
                return      # a value (its "type" is a data type), nothing to walk
        elif kind in QUERY_NODES and "modifiers" in value:
            self.query(value, scope)
            return
        elif "sample" in value and "alias" in value:     # every table reference has both
            self.table_ref(value, scope)
        elif "function_name" in value or "table_name" in value:
            _refuse("this construct")
        for key, child in value.items():
            if key == "cte_map":
                if child.get("map"):
                    _refuse("a CTE in this position")
            elif key == "function" and kind == "TABLE_FUNCTION":
                self.any(list(child.values()), scope)     # its name was checked by table_ref
            else:
                self.any(child, scope)

    def expression(self, expr: dict, scope: frozenset[str]) -> None:
        kind = expr.get("class")
        if kind not in EXPRESSIONS:
            _refuse(f"expression {kind}")
        if kind in ("FUNCTION", "WINDOW"):
            self.function(expr, ALLOWED_FUNCTIONS)

    def function(self, expr: dict, allowed: frozenset[str]) -> None:
        name = str(expr.get("function_name", "")).lower()
        if expr.get("catalog") or expr.get("schema") not in ("", "main", None):
            _refuse(f"function {expr.get('schema')}.{name}")
        if name not in allowed:
            _refuse(f"function {name}()")
        if name in ("printf", "format") and allowed is ALLOWED_FUNCTIONS:
            # A width in the format string pads to any size: only a literal, modest one.
            first = (expr.get("children") or [None])[0] or {}
            literal = first.get("value", {}) if first.get("class") == "CONSTANT" else {}
            if not isinstance(literal.get("value"), str) or re.search(r"\d{6,}", literal["value"]):
                _refuse(f"{name}() without a literal format string of modest widths")

    def table_ref(self, ref: dict, scope: frozenset[str]) -> None:
        kind = ref.get("type")
        if kind not in TABLE_REFS:
            _refuse(f"table reference {kind}")
        if kind == "BASE_TABLE":
            name = str(ref.get("table_name", "")).lower()
            if ref.get("catalog_name") or ref.get("schema_name") not in ("", "main") or ref.get("at_clause"):
                _refuse(f"table {ref.get('schema_name')}.{name}")
            if name not in CORPUS_TABLES and name not in scope:
                _refuse(f"table {name!r}")
        elif kind == "TABLE_FUNCTION":
            function = ref.get("function") or {}
            if function.get("class") != "FUNCTION":
                _refuse("this table function")
            self.function(function, ALLOWED_TABLE_FUNCTIONS)
        elif kind == "SHOW_REF":
            if ref.get("show_type") not in SHOW_KINDS or not ref.get("query"):
                _refuse("SHOW")
