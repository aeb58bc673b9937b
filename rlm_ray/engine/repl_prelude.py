"""The prelude the engine runs in every fresh REPL: FINAL / FINAL_VAR and the
`answer` dict the model finishes with (the official RLM scaffold's names)."""
from __future__ import annotations

PRELUDE_MARKER = "_rlm_prelude_installed"
PRELUDE = '''
_rlm_prelude_installed = True
answer = {"content": None, "ready": False}

def FINAL(value):
    """Finish: `value` is the answer."""
    answer["content"] = value if isinstance(value, str) else str(value)
    answer["ready"] = True
    return answer["content"]

def FINAL_VAR(name):
    """Finish with the variable called `name` as the answer."""
    name = str(name).strip().strip("'\\"")
    if name not in globals():
        raise NameError(f"FINAL_VAR: no variable named {name!r}")
    return FINAL(globals()[name])
'''
