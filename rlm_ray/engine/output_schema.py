"""Typed answers: a JSON Schema the answer of a question must fit.

The subset users know and tables can hold: objects of string, integer,
number, boolean, enum and nullable fields, lists and nested objects of
those. Anything else (a `$ref`, `oneOf`/`anyOf`/`allOf`, `not`, conditionals,
`patternProperties`) is refused up front with one line, so a run never
starts with a schema its result table could not represent. Validation is
the `jsonschema` library's (Draft 2020-12), never hand-written checks; its
messages are what the model is shown when its answer does not fit.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from rlm_ray.errors import UserError

SCALAR_TYPES = ("string", "integer", "number", "boolean", "null")
TYPES = SCALAR_TYPES + ("object", "array")
# Keywords accepted besides type/properties/items/enum: they only constrain or describe.
_ANNOTATIONS = {"$schema", "$id", "title", "description", "default", "examples", "$comment",
                "required", "additionalProperties", "minimum", "maximum", "exclusiveMinimum",
                "exclusiveMaximum", "multipleOf", "minLength", "maxLength", "pattern", "format",
                "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties",
                "const"}
MAX_MESSAGES = 8        # validator messages shown to the model per rejected answer


@dataclass(frozen=True)
class OutputSchema:
    """A checked schema; `sha256` identifies it (over its canonical JSON)."""

    schema: dict

    @property
    def canonical(self) -> str:
        return json.dumps(self.schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical.encode()).hexdigest()

    def errors(self, value: Any) -> list[str]:
        """The validator's messages for `value` ([] when it fits), each with its JSON path."""
        from jsonschema import Draft202012Validator

        validator = Draft202012Validator(self.schema)
        found = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
        return [f"{e.json_path}: {e.message}" for e in found]

    def accept(self, answer: str, exact_json: str | None = None) -> tuple[Any, list[str]]:
        """(value, []) when the answer fits, else (None, the validator's messages).

        `exact_json`: the REPL value's own JSON when the model finished with a non-str
        value (a dict, a list, a number, None): that value is what is checked. Else the
        text it wrote: parsed as JSON first, taken as a plain string when that fits."""
        if exact_json is not None:
            value = json.loads(exact_json)
            errors = self.errors(value)
            return (None, errors) if errors else (value, [])
        candidates: list[Any] = []
        try:
            candidates.append(json.loads(answer))
        except (TypeError, ValueError, RecursionError):   # not JSON (or nested past parsing)
            pass
        candidates.append(answer)
        first_errors: list[str] | None = None
        for value in candidates:
            errors = self.errors(value)
            if not errors:
                return value, []
            first_errors = errors if first_errors is None else first_errors
        return None, first_errors or []


def parse(raw: Any, origin: str = "the output schema") -> OutputSchema:
    """A schema from a dict or JSON text; UserError (one line) when unusable."""
    if isinstance(raw, (str, bytes)):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise UserError(f"{origin} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{origin} must be a JSON object (a JSON Schema)")
    _check(raw, "$", origin)
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(raw)
    except SchemaError as exc:
        raise UserError(f"{origin} is not a valid JSON Schema at "
                        f"{'/'.join(map(str, exc.path)) or 'top level'}: {exc.message}") from None
    return OutputSchema(raw)


def load(path: str) -> OutputSchema:
    """--output-schema FILE."""
    from rlm_ray import storage

    try:
        data = storage.read_bytes(path)
    except (OSError, FileNotFoundError) as exc:
        raise UserError(f"cannot read --output-schema {path}: {exc}") from None
    return parse(data.decode("utf-8", "replace"), f"--output-schema {path}")


def types_of(node: dict) -> list[str]:
    """The node's types ("type" as a string or a list; an enum's from its values)."""
    declared = node.get("type")
    if isinstance(declared, str):
        return [declared]
    if isinstance(declared, list):
        return [str(t) for t in declared]
    if "enum" in node or "const" in node:
        values = node.get("enum", [node.get("const")])
        return sorted({_json_type(v) for v in values})
    return []


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object" if isinstance(value, dict) else "array"


def _check(node: Any, where: str, origin: str) -> None:
    if not isinstance(node, dict):
        raise UserError(f"{origin}: {where} must be a schema object")
    unsupported = sorted(set(node) - _ANNOTATIONS - {"type", "properties", "items", "enum"})
    if unsupported:
        raise UserError(f"{origin}: {where} uses {', '.join(unsupported)}, which typed answers "
                        "do not support (use type, properties, required, items, enum; "
                        'nullable as "type": ["string", "null"])')
    kinds = types_of(node)
    if not kinds:
        raise UserError(f"{origin}: {where} has no type (give \"type\" or \"enum\")")
    bad = [k for k in kinds if k not in TYPES]
    if bad:
        raise UserError(f"{origin}: {where} has unknown type {bad[0]!r}")
    if len([k for k in kinds if k != "null"]) > 1:
        raise UserError(f"{origin}: {where} mixes types {kinds}: one type per field "
                        "(plus \"null\"), so the result column has one type")
    for name, child in (node.get("properties") or {}).items():
        _check(child, f"{where}.{name}", origin)
    if "items" in node:
        _check(node["items"], f"{where}[]", origin)
    additional = node.get("additionalProperties")
    if isinstance(additional, dict):
        raise UserError(f"{origin}: {where} additionalProperties must be true or false")


def prompt_section(schema: OutputSchema, retries: int) -> str:
    """What the system prompt adds when answers are typed."""
    shown = json.dumps(schema.schema, indent=2, ensure_ascii=False)
    return (
        "\n\nTyped answer: the answer must be a JSON value that matches this JSON Schema "
        "(the output schema):\n"
        f"```json\n{shown}\n```\n"
        "Finish with a value of that shape: build it in code as a Python dict (or list) and end "
        "with FINAL_VAR(name), or set answer[\"content\"] = that dict and answer[\"ready\"] = "
        "True. A FINAL(...) of JSON text is parsed as JSON. Use real types (int for integer, "
        "True/False for boolean, None for null), every required field, only the listed enum "
        "values. The engine checks the value against the schema: if it does not match, the "
        f"validator's messages are shown to you and you get {retries} more tries to fix it.")


def rejection_note(errors: list[str], retries_left: int) -> str:
    shown = errors[:MAX_MESSAGES]
    more = f"\n  (+{len(errors) - len(shown)} more)" if len(errors) > len(shown) else ""
    lines = "\n".join(f"  - {e}" for e in shown)
    return ("your answer does not match the output schema; the validator says:\n"
            f"{lines}{more}\nFix the value and finish again ({retries_left} "
            f"{'try' if retries_left == 1 else 'tries'} left).")
