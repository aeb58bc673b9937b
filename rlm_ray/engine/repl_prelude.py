"""The prelude the engine runs in every fresh REPL: FINAL / FINAL_VAR / SHOW_VARS,
the `answer` dict the model finishes with (the official RLM scaffold's names),
and `_rlm`, the scaffold object that keeps the engine's names alive.

Install order (docs/architecture.md): PRELUDE, then the context, then
SNAPSHOT, which records the reserved names as they are at that moment. After
every block the engine runs AFTER_BLOCK: names the model rebound (`context =
context[:100]`, `llm_query = None`) are put back, and `_rlm_state` (what the
engine reads with `sandbox.get`) is refreshed with the answer as text and a
short listing of the model's variables.

`answer` starts as the answer dict. A model that rebinds it to an answer dict
(a dict with a "ready" key) speaks that protocol: a ready one is adopted, and
the engine's dict is put back; so it is when the model already wrote into the
dict (`answer["content"] = ...`, then `answer` as a loop variable). A model
that binds it to anything else before that (`answer = llm_query(...)`, a
result dict) owns the name from then on, as older scaffolds let it: it is no
longer restored, it is listed with the model's variables and
FINAL_VAR(answer) finishes with its value (while `answer` is the dict, with
the dict's content). FINAL / FINAL_VAR keep working (they write the dict).

This text runs inside the sandbox; it must only use the stdlib.
"""
from __future__ import annotations

PRELUDE_MARKER = "_rlm_prelude_installed"
STATE_NAME = "_rlm_state"
RESERVED_NAMES = ("answer", "context", "FINAL", "FINAL_VAR", "SHOW_VARS", "llm_query",
                  "llm_query_batched", "rlm_query", "rlm_query_batched")
SNAPSHOT = "_rlm.snapshot(globals())"
AFTER_BLOCK = "_rlm.after_block(globals())"

PRELUDE = '''
_rlm_prelude_installed = True

class _RLMScaffold:
    RESERVED = %(reserved)r
    MAX_LISTED = 40

    def __init__(self):
        self.answer = {"content": "", "ready": False}
        self.saved = {}
        self.answer_owned = False     # the model bound `answer` to a value of its own
        self.final_json = None        # (text, JSON) of the last FINAL value that was not a str

    def reserved(self, name):
        return name in self.RESERVED and not (name == "answer" and self.answer_owned)

    @staticmethod
    def text(value):
        """Any answer value as text: str as is, JSON for lists and dicts, else str()."""
        if isinstance(value, str):
            return value
        if isinstance(value, (list, tuple, dict)):
            import json
            try:
                return json.dumps(value, ensure_ascii=False, default=str)
            except (TypeError, ValueError):
                return str(value)
        return str(value)

    @staticmethod
    def as_json(value):
        """The value's exact JSON when it has one (typed answers read it, not the text)."""
        if isinstance(value, str):
            return None
        import json
        try:
            return json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            return None

    def json_of(self, content):
        if not isinstance(content, str):
            return self.as_json(content)
        held = self.final_json
        return held[1] if held is not None and held[0] == content else None

    def snapshot(self, ns):
        ns["answer"] = self.answer
        self.saved = {name: ns[name] for name in self.RESERVED if name in ns}

    def user_names(self, ns):
        import types
        return [name for name, value in ns.items()
                if not name.startswith("_") and not self.reserved(name)
                and not isinstance(value, (types.ModuleType, type))
                and not callable(value)]

    @staticmethod
    def describe(value):
        # Sizes only of builtin containers: a model's own __len__ could hang or raise.
        kind = type(value).__name__
        if type(value) is str:
            return f"{kind}, {len(value)} chars"
        if type(value) in (list, tuple, dict, set, frozenset, bytes, bytearray):
            return f"{kind}, {len(value)} items"
        return kind

    def show_vars(self, ns):
        names = self.user_names(ns)
        if not names:
            return "No variables yet (besides context and the REPL functions)."
        return "Variables: " + ", ".join(
            f"{name} ({self.describe(ns[name])})" for name in names)

    def after_block(self, ns):
        restored = []
        current = ns.get("answer")
        rebound = current is not self.answer          # also when deleted
        if rebound and isinstance(current, dict) and current.get("ready") and "content" in current:
            self.answer["content"] = current["content"]    # a whole answer dict that says ready
            self.answer["ready"] = True
        elif rebound and not self.answer_owned:
            # The engine's dict already written into: this model speaks the protocol, and
            # `answer` as, say, a loop variable must not cost it the dict.
            protocol = self.answer.get("content") != "" or bool(self.answer.get("ready"))
            if protocol or "answer" not in ns or (isinstance(current, dict) and "ready" in current):
                restored.append("answer")      # put back (deleted, or a dict not ready yet)
            else:                              # a value of the model's own: the name is its
                self.answer_owned = True
                self.saved.pop("answer", None)
        for name, value in self.saved.items():
            if ns.get(name) is not value:
                ns[name] = value
                if name != "answer":
                    restored.append(name)
        content, ready = self.answer.get("content"), bool(self.answer.get("ready"))
        names = self.user_names(ns)
        ns[%(state)r] = {
            "ready": ready and content is not None,
            "content": None if content is None else self.text(content),
            "json": None if content is None else self.json_of(content),
            "restored": restored,
            "variables": [f"{n} ({self.describe(ns[n])})" for n in names[:self.MAX_LISTED]],
            "more_variables": max(0, len(names) - self.MAX_LISTED),
        }

_rlm = _RLMScaffold()
answer = _rlm.answer

def FINAL(value):
    """Finish: `value` is the answer (any value; lists and dicts become JSON)."""
    _rlm.answer["content"] = _rlm.text(value)
    _rlm.final_json = (_rlm.answer["content"], _rlm.as_json(value))
    _rlm.answer["ready"] = True
    return _rlm.answer["content"]

def FINAL_VAR(variable):
    """Finish with a variable: FINAL_VAR("name"), FINAL_VAR(name) or FINAL_VAR(value)."""
    ns = globals()
    if variable is _rlm.answer:       # the answer dict itself: its content is the answer
        return FINAL(_rlm.answer["content"])
    if isinstance(variable, str):
        name = variable.strip().strip("\\'\\"").strip()
        if name == "answer" and "answer" in ns:     # the model's value, or the dict's content
            held = ns["answer"]
            return FINAL(_rlm.answer["content"] if held is _rlm.answer else held)
        if name.isidentifier() and name in ns and not _rlm.reserved(name):
            return FINAL(ns[name])
        passed_by_name = any(value is variable for key, value in ns.items()
                             if not key.startswith("_"))
        if name.isidentifier() and not passed_by_name:
            listed = ", ".join(_rlm.user_names(ns)) or "none"
            raise NameError(f"FINAL_VAR: no variable named {name!r} in the REPL "
                            f"(variables: {listed}). Assign the answer to a variable first, "
                            "or finish with FINAL(value).")
    return FINAL(variable)

def SHOW_VARS():
    """The REPL's variables with their type and size."""
    return _rlm.show_vars(globals())
''' % {"reserved": RESERVED_NAMES, "state": STATE_NAME}
