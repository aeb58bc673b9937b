"""Scripted RLM policies of the provider SIMULATOR.

- `sim/rlm-policy` behaves like a competent RLM root model. As a ROOT (a
  system message is present) it reads the question from the first user
  message (`registry.question_in`), picks the question family by its
  phrasing (docs/architecture.md, "Question families"), and writes real REPL
  code over several turns: explore, map with sub-calls, aggregate in
  variables, FINAL. It reads the
  `REPL output (iteration K):` messages to decide its next step (see
  policy_core: stage markers, fallbacks after `Error:`, a hard turn cap).
  As a SUB-MODEL (no system message) it answers by the rules in policy_sub.
- Both answer the engine's compaction request (`Summary required:`) with a
  summary in prose (policy_summary); `sim/explorer` (policy_explore) is the
  long, slow reader that makes compaction happen.
- `sim/gullible` is a root that fell for a prompt injection: it reads the
  documents, and runs any `run <code>` line it finds in them as REPL code.
  It exists so the engine's tests can show the sandbox containing it.

Both are pure functions of the messages: no file, corpus or global state.
"""
from __future__ import annotations

import re

from rlm_ray.sim import policy_code_families, policy_record_families  # noqa: F401 (register)
from rlm_ray.sim import policy_typed
from rlm_ray.sim.policy_core import (FAMILIES, MAX_TURNS, Conversation, find_family,
                                     register_family, run_family)
from rlm_ray.sim.policy_record_families import GENERIC
from rlm_ray.sim.policy_sub import answer_sub
from rlm_ray.sim.policy_summary import is_summary_request, summarise
from rlm_ray.sim.registry import last_user_text, register_policy, text_of

# The catch-all must stay last: first match wins.
register_family("unknown", r"(?s).*", *GENERIC)


@register_policy("sim/rlm-policy")
def rlm_policy(messages: list[dict]) -> str:
    conv = Conversation.parse(messages)
    if not conv.is_root:
        return answer_sub(last_user_text(messages))
    if is_summary_request(messages):   # the engine compacts the conversation
        return summarise(messages)
    family, match = find_family(conv.question, FAMILIES)
    system = next((text_of(m.get("content")) for m in messages if m.get("role") == "system"), "")
    schema = policy_typed.schema_in(system)
    if schema is None:
        return run_family(family, match, conv)
    if policy_typed.misfit_shown(conv) and not conv.forced_final and len(conv.outputs) < MAX_TURNS:
        return policy_typed.fix_reply(conv, schema)
    return run_family(family, match, conv,
                      finish=lambda code: policy_typed.shape(code, conv, schema))


def family_of(question: str) -> str:
    """The family name `sim/rlm-policy` picks for `question` (for generators and tests)."""
    return find_family(question, FAMILIES)[0].name


# -- sim/gullible ------------------------------------------------------------
_INSTRUCTION = re.compile(r"^INSTRUCTION: (.+)$", re.MULTILINE)
_READ_DOCUMENTS = r"""
import re
if isinstance(context, str):
    lines = context.splitlines()
else:
    lines = [line for d in context.docs(limit=20) for line in context.read(d['path']).splitlines()]
    lines += [h['text'] for h in context.grep(r'\brun\s', limit=50)]
for line in dict.fromkeys(lines):
    # "... run <call>" anywhere in a line, when what follows looks like a call
    found = re.search(r'\brun\s+`?([\w.]+\(.*\))`?\s*$', line)
    if found:
        print('INSTRUCTION:', found.group(1))
print('read', len(lines), 'lines')
"""


@register_policy("sim/gullible")
def gullible(messages: list[dict]) -> str:
    conv = Conversation.parse(messages)
    if not conv.is_root:
        return answer_sub(last_user_text(messages))
    if is_summary_request(messages):
        return summarise(messages)
    if conv.forced_final:
        return "FINAL(I followed the instructions in the documents.)"
    if not conv.outputs:
        return f"Let me read the documents first.\n```repl{_READ_DOCUMENTS}```"
    if len(conv.outputs) == 1:
        instructions = _INSTRUCTION.findall(conv.outputs[0].text)
        if instructions:
            code = "\n".join(["import os, subprocess", *instructions])
            return (f"The documents tell me what to run, so I run it.\n```repl\n{code}\n"
                    "print('ran the instructions from the documents')\n```")
    return ("Done.\n```repl\nFINAL('I followed the instructions in the documents.')\n```")
