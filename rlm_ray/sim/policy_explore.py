"""`sim/explorer`: a root that explores a str context the slow way, as real
models often do. It previews the context, then reads it piece by piece,
printing each piece whole (PIECE_CHARS characters, ~15k, per turn) until a
piece shows what the question asks; then it extracts the value from the whole
context with `re` and finishes with FINAL_VAR. A question `What is <subject>?`
whose answer (`<subject> is <value>.`) sits near the end of a 450k-character
context takes ~30 turns and sends ~15k characters of REPL output back per
turn: the long run that makes the engine compact its conversation.

Stateless like every policy: progress is read from the conversation, from the
`piece K of N` headers its own code printed and, once older turns were
compacted, from its own summary ("I have read pieces 1 to K of N"). The first
turn after a compaction also looks at `history`, as a model told about it would.
"""
from __future__ import annotations

import re

from rlm_ray.sim.policy_core import Conversation
from rlm_ray.sim.policy_sub import answer_sub
from rlm_ray.sim.policy_summary import is_summary_request
from rlm_ray.sim.registry import last_user_text, register_policy, root_question, text_of

PIECE_CHARS = 15_000
NOT_FOUND = "not found"
_QUESTION = re.compile(r"(?i)^what is (.+?)\?$")
_PREVIEW = re.compile(r"(?m)^context: (\d+) characters, (\d+) pieces of")
_PIECE = re.compile(r"(?m)^piece (\d+) of (\d+) \(characters")
_SUMMARY = re.compile(r"I have read pieces 1 to (\d+) of (\d+)")
_COMPACTED = re.compile(r"(?m)^Context compacted:")
_HISTORY_LOOKED = "earlier messages in `history`"

PREVIEW = f"""\
Let me look at the context first: its size, how it is laid out, and how many pieces of
{PIECE_CHARS} characters it makes.
```repl
piece = {PIECE_CHARS}
pieces = (len(context) + piece - 1) // piece
print(f"context: {{len(context)}} characters, {{pieces}} pieces of {{piece}} characters")
print(context[:1000])
```"""


def subject_of(question: str) -> str | None:
    found = _QUESTION.match(question.strip())
    return found.group(1).strip() if found else None


def value_pattern(subject: str) -> str:
    return re.escape(subject) + r" is (\S+?)[.,;]?(?:\s|$)"


def progress(messages: list[dict]) -> tuple[int, int | None]:
    """(pieces read, pieces in all or None before the preview ran)."""
    read, total = 0, None
    for message in messages:
        text = text_of(message.get("content"))
        if message.get("role") == "assistant":
            for k, n in _SUMMARY.findall(text):
                read, total = max(read, int(k)), int(n)
            continue
        for _, n in _PREVIEW.findall(text):
            total = int(n)
        for k, n in _PIECE.findall(text):
            read, total = max(read, int(k)), int(n)
    return read, total


def summary(messages: list[dict], subject: str) -> str:
    """The explorer's answer to the engine's compaction request."""
    read, total = progress(messages)
    if total is None:
        return (f"I am looking for {subject}. I have not looked at the context yet; next step: "
                "print its size and its start.")
    return (f"I am looking for {subject} in a str context read in pieces of {PIECE_CHARS} "
            f"characters (the REPL variables `piece` and `pieces` hold the size and the count). "
            f"I have read pieces 1 to {read} of {total} in full, one per turn; {subject} is in "
            f"none of them. Next step: read piece {read + 1} of {total}.")


def read_piece(index: int, total: int, subject: str, look_at_history: bool) -> str:
    look = (f'print(f"{{len(history)}} {_HISTORY_LOOKED}; the last one starts: "\n'
            f'      f"{{history[-1][\'content\'][:80]!r}}")\n' if look_at_history else "")
    intro = ("My earlier turns were compacted; my summary says where I am, and the full turns "
             "are in `history`. " if look_at_history else "")
    return (f"{intro}{subject[0].upper() + subject[1:]} is not in the pieces I have read so "
            f"far ({index} of {total}). I read the next one in full.\n```repl\n{look}"
            f"i = {index}\n"
            f'print(f"piece {{i + 1}} of {{pieces}} (characters {{i * piece}}-'
            f'{{min(len(context), (i + 1) * piece)}}):")\n'
            f"print(context[i * piece:(i + 1) * piece])\n```")


def finish(subject: str, piece_number: int) -> str:
    return (f"Piece {piece_number} mentions {subject}. I extract the value from the whole "
            f"context to be exact.\n```repl\nimport re\n"
            f"found = re.search({value_pattern(subject)!r}, context, re.IGNORECASE)\n"
            f"result = found.group(1) if found else {NOT_FOUND!r}\nprint(result)\n```\n"
            "That is the value the question asks for.\nFINAL_VAR(result)")


@register_policy("sim/explorer")
def explorer(messages: list[dict]) -> str:
    if not any(m.get("role") == "system" for m in messages):
        return answer_sub(last_user_text(messages))
    subject = subject_of(root_question(messages)) or "the answer"
    if is_summary_request(messages):
        return summary(messages, subject)
    conv = Conversation.parse(messages)
    if conv.forced_final:
        return f"FINAL({NOT_FOUND})"
    read, total = progress(messages)
    if total is None:
        return PREVIEW
    if conv.outputs and re.search(value_pattern(subject), conv.last_output(), re.IGNORECASE):
        return finish(subject, read)
    if read >= total:
        return f"I have read all {total} pieces and {subject} is not in them.\nFINAL({NOT_FOUND})"
    compacted = any(_COMPACTED.search(text_of(m.get("content"))) for m in messages
                    if m.get("role") == "user")
    looked = any(_HISTORY_LOOKED in output.text for output in conv.outputs)
    return read_piece(read, total, subject, compacted and not looked)
