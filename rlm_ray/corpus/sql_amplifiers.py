"""Size guards for the functions that build a large value from small inputs.

DuckDB's `memory_limit` governs its buffer manager (aggregates, joins,
sorts), not the string heap of a vector: `repeat('x', 10000000)` over 300
rows put gigabytes on the host before any limit could act, and an interrupt
is only seen between vectors. So each call of a size-amplifying function is
rewritten, in the parsed tree, as

    CASE WHEN <size of its result> > max THEN error('...') ELSE <the call> END

which fails that row with a clear message before the value is built. Scalar
`range`/`generate_series` (lists) are not in the allow-list at all; their
table forms stream rows and are bounded by the deadline.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

NO_LOCATION = 18446744073709551615   # DuckDB's "no position in the query text"


def _function(name: str, children: list[dict], *, operator: bool = False) -> dict:
    return {"class": "FUNCTION", "type": "FUNCTION", "alias": "", "query_location": NO_LOCATION,
            "function_name": name, "schema": "", "children": children, "filter": None,
            "order_bys": {"type": "ORDER_MODIFIER", "orders": []}, "distinct": False,
            "is_operator": operator, "export_state": False, "catalog": ""}


def _constant(kind: str, value: Any) -> dict:
    return {"class": "CONSTANT", "type": "VALUE_CONSTANT", "alias": "", "query_location": NO_LOCATION,
            "value": {"type": {"id": kind, "type_info": None}, "is_null": False, "value": value}}


def _argument(index: int) -> Callable[[list[dict]], dict | None]:
    return lambda args: args[index] if len(args) > index else None


# function -> the size (characters or list items) of its result, from its arguments.
RESULT_SIZE: dict[str, Callable[[list[dict]], dict | None]] = {
    "repeat": lambda args: _function("*", [_function("len", [args[0]]), args[1]], operator=True)
    if len(args) == 2 else None,
    "lpad": _argument(1),
    "rpad": _argument(1),
    "list_resize": _argument(1),
    "array_resize": _argument(1),
    "bar": _argument(3),
}


def guard_value_sizes(value: Any, max_size: int) -> Any:
    """`value` (a parsed tree) with every amplifying call wrapped in a size check."""
    if isinstance(value, list):
        return [guard_value_sizes(item, max_size) for item in value]
    if not isinstance(value, dict):
        return value
    if value.get("class") == "CONSTANT":
        return value
    walked = {key: guard_value_sizes(child, max_size) for key, child in value.items()}
    for before, after in zip(value.get("select_list") or [], walked.get("select_list") or []):
        # A guarded output column without an alias is named after its function
        # (`repeat`), not after the CASE around it.
        if after is not before and after.get("class") == "CASE" and not after["alias"] \
                and before.get("class") == "FUNCTION":
            after["alias"] = str(before["function_name"]).lower()
    name = str(walked.get("function_name", "")).lower()
    if walked.get("class") != "FUNCTION" or name not in RESULT_SIZE:
        return walked
    size = RESULT_SIZE[name](walked["children"])
    if size is None:
        return walked
    message = (f"{name}() would build a value over {max_size:,} characters/items; "
               "build smaller values (the corpus host's memory is bounded)")
    return {
        # An alias inside a call would print as a named argument: only keep one that was there.
        "class": "CASE", "type": "CASE_EXPR", "alias": walked["alias"], "query_location": NO_LOCATION,
        "case_checks": [{
            "when_expr": {"class": "COMPARISON", "type": "COMPARE_GREATERTHAN", "alias": "",
                          "query_location": NO_LOCATION, "left": size,
                          "right": _constant("BIGINT", int(max_size))},
            "then_expr": _function("error", [_constant("VARCHAR", message)]),
        }],
        "else_expr": {**walked, "alias": ""},
    }
