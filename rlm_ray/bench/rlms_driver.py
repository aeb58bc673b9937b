"""Runs the compare workload with the official `rlms` package, inside its own
venv (`.bench/rlms-venv`): this file is executed there as a script and must
not import rlm_ray (it is not installed in that venv).

Input: a JSON spec on stdin {base_url, model, max_iterations, max_retries,
tasks: [{id, question, context}]}; output: one JSON object on stdout.

Two dialect shims, both plain text, so the SIMULATOR's scripted root policy
(written against rlm-ray's conversation format) can drive rlms too; a real
model needs neither:
- the question goes in rlms's `root_prompt` between `<question>` and
  `</question>` lines, as rlm-ray lays it out (a multi-line question whole);
- rlms's `REPL output:` headers are numbered `REPL output (iteration K):`
  before a request leaves, and `FINAL(x)` / `FINAL_VAR(name)` are defined in
  rlms's REPL on top of its own `answer["ready"] = True` convention; a root
  reply that finishes with a FINAL / FINAL_VAR line after its code (the
  real-model dialect the policy writes) gets that call appended as a last
  ```repl``` block, since rlms finishes only from code.
Everything else (client, retries, batching, REPL) is rlms's own code path.
"""
from __future__ import annotations

import json
import re
import sys
import time

FINAL_HELPERS = '''
import sys as _sys
def FINAL(value):
    answer["content"] = str(value)
    answer["ready"] = True
def FINAL_VAR(name):
    FINAL(_sys._getframe(1).f_globals[name])
'''


class Counters:
    calls = 0
    failed = 0


def _number_outputs(prompt):
    if not isinstance(prompt, list):
        return prompt
    out, k = [], 0
    for message in prompt:
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, str) \
                and content.startswith("REPL output:"):
            k += 1
            message = {**message, "content": f"REPL output (iteration {k}):" + content[len("REPL output:"):]}
        elif message.get("role") == "user" and isinstance(content, str) \
                and content.startswith("REPL output (block "):   # a reply with several blocks
            k += 1
            message = {**message, "content": f"REPL output (iteration {k}):\n" + content}
        out.append(message)
    return out


_CODE = re.compile(r"```.*?```", re.DOTALL)
_FINAL_LINE = re.compile(r"^[ \t]*(FINAL_VAR|FINAL)[ \t]*\((.*)\)[ \t]*$", re.MULTILINE)


def _final_as_code(prompt, reply):
    """A root reply's FINAL / FINAL_VAR line outside its code, run as a last block."""
    is_root = isinstance(prompt, list) and any(m.get("role") == "system" for m in prompt)
    found = _FINAL_LINE.search(_CODE.sub("", reply)) if is_root and isinstance(reply, str) else None
    if not found:
        return reply
    kind, arg = found.group(1), found.group(2).strip()
    name = arg.strip("'\"")
    call = f"FINAL_VAR({name!r})" if kind == "FINAL_VAR" else f"FINAL({arg!r})"
    return f"{reply}\n```repl\n{call}\n```"


def _instrument(client):
    sync, coro = client.completion, client.acompletion

    def completion(prompt, model=None):
        Counters.calls += 1
        try:
            return _final_as_code(prompt, sync(_number_outputs(prompt), model))
        except Exception:
            Counters.failed += 1
            raise

    async def acompletion(prompt, model=None):
        Counters.calls += 1
        try:
            return _final_as_code(prompt, await coro(_number_outputs(prompt), model))
        except Exception:
            Counters.failed += 1
            raise

    client.completion, client.acompletion = completion, acompletion
    return client


def main() -> int:
    spec = json.load(sys.stdin)
    import rlm
    import rlm.core.rlm as core
    from rlm import RLM

    original = core.get_client
    core.get_client = lambda backend, kwargs: _instrument(original(backend, kwargs))
    backend_kwargs = {"model_name": spec["model"], "base_url": spec["base_url"],
                      "api_key": "sim-no-key", "max_retries": spec["max_retries"]}
    results = []
    started = time.perf_counter()
    for task in spec["tasks"]:
        t0 = time.perf_counter()
        engine = RLM(backend="openai", backend_kwargs=backend_kwargs, environment="local",
                     environment_kwargs={"setup_code": FINAL_HELPERS},
                     max_iterations=spec["max_iterations"], verbose=False)
        try:
            answer, error = engine.completion(task["context"], root_prompt=f"\n<question>\n{task['question']}\n</question>\n").response, None
        except Exception as exc:  # a failed question is a result, not a crash of the run
            answer, error = None, f"{type(exc).__name__}: {exc}"[:500]
        results.append({"id": task["id"], "answer": answer, "error": error,
                        "wall_s": time.perf_counter() - t0})
    json.dump({"wall_s": time.perf_counter() - started, "results": results,
               "calls": Counters.calls, "failed_calls": Counters.failed,
               "rlms_version": getattr(rlm, "__version__", None)}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
