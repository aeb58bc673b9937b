"""Typed answers in the scripted root policy: what a model does when the
system prompt gives it an output schema.

It reads the schema from the prompt (the JSON block the prompt shows), works
out the answer exactly as without one (the question's family), then, instead
of finishing with its text, builds a dict of the schema's shape in the REPL
and ends with FINAL_VAR. The fields are filled from what its code computed:
counts for integers and numbers, the found names for lists of strings,
"found any" for booleans, the answer text for strings (an enum takes the
member the text names, else its last one). A stand-in maps fields by their
type, where a model would also read their names.

Like real models it slips on the first draft in one common way: when the
question asks "how many", the count it computed is held as text (`result =
str(...)`), and it copies that text into the integer field. The validator's
messages, shown by the engine, are then read and acted on: "'3' is not of
type 'integer'" converts the field, "'x' is a required property" adds it.
Anything else (a maximum, a pattern) cannot be fixed without changing what
the code found, so it resubmits the same value, as an honest model would.
"""
from __future__ import annotations

import json
import re
from dataclasses import replace

from rlm_ray.sim.policy_core import Code, Conversation, block

# The prompt's schema block: a ```json fence after the words "output schema".
_SCHEMA_BLOCK = re.compile(r"output schema\)?:?\s*\n```json\n(.*?)\n```", re.DOTALL | re.I)
_MISFIT = "does not match the output schema"
_TYPE_ERROR = re.compile(r"^\s*- (\$\S*): .* is not of type '(\w+)'", re.MULTILINE)
_REQUIRED = re.compile(r"^\s*- (\$\S*): '(.+?)' is a required property", re.MULTILINE)
_CONVERT = {"integer": "int({v})", "number": "float({v})", "string": "str({v})",
            "boolean": "bool({v})", "array": "[{v}]"}


def schema_in(system: str) -> dict | None:
    found = _SCHEMA_BLOCK.search(system)
    if not found:
        return None
    try:
        schema = json.loads(found.group(1))
    except ValueError:
        return None
    return schema if isinstance(schema, dict) else None


def _kind(node: dict) -> str:
    declared = node.get("type")
    kinds = [declared] if isinstance(declared, str) else list(declared or [])
    if not kinds and "enum" in node:
        kinds = ["string" if isinstance(v, str) else "integer" for v in node["enum"]][:1]
    kinds = [k for k in kinds if k != "null"]
    return kinds[0] if kinds else "string"


def _value_code(node: dict, counting: bool) -> str:
    """Python source for the field, over `found` (text), `items` and `count`."""
    kind = _kind(node)
    if "enum" in node:
        members = node["enum"]
        return (f"next((m for m in {members!r} if str(m).lower() in found.lower()), "
                f"{members[-1]!r})")
    if kind == "object":
        required = set(node.get("required") or ())
        fields = ", ".join(f"{name!r}: {_field_code(name in required, child, counting)}"
                           for name, child in (node.get("properties") or {}).items())
        return "{" + fields + "}"
    if kind == "array":
        return "items" if _kind(node.get("items") or {}) == "string" else "[]"
    if kind == "integer":
        return "found" if counting else "count"     # the first draft's slip: the count as text
    return {"number": "float(count)", "boolean": "count > 0"}.get(kind, "found")


def _field_code(required: bool, node: dict, counting: bool) -> str:
    declared = node.get("type")
    nullable = declared == "null" or (isinstance(declared, list) and "null" in declared)
    # An optional field that may be null (a note, a detail) is left empty, not guessed.
    return "None" if nullable and not required else _value_code(node, counting)


def _found_code(final: str, final_value: str) -> str:
    source = final if final else repr(final_value)
    return (f"found = str({source}).strip()\n"
            "items = [s.strip() for s in found.split(',') if s.strip() and s.strip() != 'none']\n"
            "count = int(found) if found.isdigit() else len(items)")


def shape(code: Code, conv: Conversation, schema: dict) -> Code:
    """A stage's finishing reply, ending with a dict of the schema's shape."""
    if not (code.final or code.final_value):
        return code
    counting = conv.question.lower().lstrip().startswith("how many")
    typed = (f"{_found_code(code.final, code.final_value)}\n"
             f"typed = {_value_code(schema, counting)}\nprint(typed)")
    look = f"{code.look}\n{typed}" if code.look else typed
    after = ((code.after + " " if code.after else "")
             + "The answer must follow the output schema, so I put it in a dict of that shape.")
    return replace(code, look=look, after=after, final="typed", final_value="")


def misfit_shown(conv: Conversation) -> bool:
    return bool(conv.outputs) and _MISFIT in conv.last_output()


def _target(path: str) -> str:
    """A validator's JSON path (`$.a.b[0]`) as the Python expression that reaches it."""
    expr = "typed"
    for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path[1:]):
        expr += f"[{name!r}]" if name else f"[{index}]"
    return expr


def _node_at(schema: dict, path: str) -> dict:
    node = schema
    for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path[1:]):
        node = (node.get("properties") or {}).get(name, {}) if name else node.get("items", {})
    return node


def fix_reply(conv: Conversation, schema: dict) -> str:
    """The reply after the engine showed the validator's messages."""
    text = conv.last_output()
    counting = False     # a field added now is written with care
    lines = []
    for path, kind in _TYPE_ERROR.findall(text):
        if kind in _CONVERT:
            target = _target(path)
            lines.append(f"{target} = {_CONVERT[kind].format(v=target)}")
    for path, name in _REQUIRED.findall(text):
        node = (_node_at(schema, path).get("properties") or {}).get(name, {"type": "string"})
        lines.append(f"{_target(path)}[{name!r}] = {_value_code(node, counting)}")
    if not lines:
        return ("The validator's complaint is about what the data says, not how I wrote it; "
                "my code computed these values, so I keep them.\n\n"
                + block("print(typed)") + "\n\nFINAL_VAR(typed)")
    return ("The validator shows what does not fit the schema; I fix those fields.\n\n"
            + block("\n".join(lines) + "\nprint(typed)") + "\n\nFINAL_VAR(typed)")
