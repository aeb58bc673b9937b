"""Typed result tables: the `output` column of `answers`, its Arrow type
derived from the run's output schema, and the rule that one results folder
holds one schema (recorded in run.json with its hash; a resume with another
one is refused, since its rows could not share the column).

JSON Schema -> Arrow: object with properties -> struct (one child per
property, in the schema's order), array -> list of its items' type, integer
-> int64, number -> float64, boolean -> bool, string and enums of strings ->
string. A field is nullable unless the schema requires it and does not allow
null. An object without properties (free-form) is kept as its JSON text.
"""
from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from rlm_ray.batch.manifest import read_run_info
from rlm_ray.engine.output_schema import OutputSchema, types_of
from rlm_ray.errors import UserError

OUTPUT_COLUMN = "output"
_SCALARS = {"string": pa.string(), "integer": pa.int64(), "number": pa.float64(),
            "boolean": pa.bool_()}


def _main_type(node: dict) -> str:
    kinds = [k for k in types_of(node) if k != "null"]
    return kinds[0] if kinds else "string"


def _free_form(node: dict) -> bool:
    kind = _main_type(node)
    return (kind == "object" and not node.get("properties")) or \
        (kind == "array" and not isinstance(node.get("items"), dict))


def arrow_type(node: dict) -> pa.DataType:
    kind = _main_type(node)
    if _free_form(node):
        return pa.string()
    if kind == "object":
        required = set(node.get("required") or ())
        return pa.struct([
            pa.field(name, arrow_type(child),
                     nullable=name not in required or "null" in types_of(child))
            for name, child in node["properties"].items()])
    if kind == "array":
        return pa.list_(arrow_type(node["items"]))
    return _SCALARS[kind]


def output_field(schema: OutputSchema) -> pa.Field:
    # The column itself is always nullable: a row whose answer never fit has none.
    return pa.field(OUTPUT_COLUMN, arrow_type(schema.schema), nullable=True)


def to_arrow_value(value: Any, node: dict) -> Any:
    """A value that fit the schema, shaped for its Arrow type (free-form parts as JSON
    text, properties the schema does not name dropped: the raw answer keeps them)."""
    if value is None:
        return None
    if _free_form(node):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    kind = _main_type(node)
    if kind == "object" and isinstance(value, dict):
        return {name: to_arrow_value(value.get(name), child)
                for name, child in node["properties"].items()}
    if kind == "array" and isinstance(value, list):
        return [to_arrow_value(v, node["items"]) for v in value]
    if kind == "integer" and isinstance(value, float):
        return int(value)   # JSON Schema counts 3.0 as an integer
    return value


def record(schema: OutputSchema | None) -> dict:
    """What run.json says about the run's typed answers."""
    if schema is None:
        return {"output_schema": None, "output_schema_sha256": None}
    return {"output_schema": schema.schema, "output_schema_sha256": schema.sha256,
            "output_arrow_type": str(arrow_type(schema.schema))}


def check_resume(out_uri: str, schema: OutputSchema | None, has_answers: bool) -> None:
    """Refuse to add rows typed by another schema (or untyped ones) to a folder."""
    info = read_run_info(out_uri) or {}
    if not has_answers:
        return
    before = info.get("output_schema_sha256")
    now = schema.sha256 if schema is not None else None
    if before != now:
        said = f"output schema {before[:12]}" if before else "no output schema"
        asked = f"output schema {now[:12]}" if now else "no output schema"
        raise UserError(f"{out_uri} holds answers written with {said}; this run has {asked}: "
                        "rerun with the same --output-schema, or write to a new --out")


def output_text(value: Any, indent: int | None = None) -> str:
    """A typed output as `show` and the HTML page display it (JSON, keys in schema order)."""
    return json.dumps(value, ensure_ascii=False, indent=indent, default=str)
