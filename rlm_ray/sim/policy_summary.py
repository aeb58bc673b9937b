"""How the simulator's root policies answer the engine's compaction request.

When the root conversation nears the window, the engine sends the older turns
once more with a `Summary required:` paragraph at the end of the last user
message (docs/architecture.md, "Compaction"). A real model answers in prose:
what it found, what it has looked at, which variables hold what, what is next.
`summarise` writes that from the messages alone (stateless, like every policy):
the question, each REPL output it can still see reduced to its first lines, the
variables the engine listed last, and any partial answer it printed.
"""
from __future__ import annotations

import re

from rlm_ray.sim.registry import root_question, text_of

SUMMARY_REQUEST = "Summary required:"
_REQUEST = re.compile(rf"(?m)^{re.escape(SUMMARY_REQUEST)}")
_OUTPUT_HEAD = re.compile(r"^REPL output \(iteration (\d+)\):\n?")
_VARIABLES = re.compile(r"(?m)^REPL variables: (.*)$")
_SO_FAR = re.compile(r"(?m)^answer so far: (.*)$")
_STEP_DONE = re.compile(r"(?m)^STEP_DONE (\d+)\s*$")
_EARLIER_STEPS = re.compile(r"(?m)^Steps of my plan completed: 1 to (\d+)\.")
_PARTIAL = re.compile(r"(?m)^Partial answer so far: (.*)$")
_EARLIER = re.compile(r"(?s)^Summary of my work so far \(replies 1 to \d+\):\n(.*)$")
LINES_PER_OUTPUT = 2
LINE_CHARS = 160


def is_summary_request(messages: list[dict]) -> bool:
    users = [m for m in messages if m.get("role") == "user"]
    return len(users) > 1 and bool(_REQUEST.search(text_of(users[-1].get("content"))))


def earlier_summary(messages: list[dict]) -> str | None:
    """The text of a summary this conversation already holds (after a compaction)."""
    for message in messages:
        if message.get("role") == "assistant":
            found = _EARLIER.match(text_of(message.get("content")))
            if found:
                return found.group(1).strip()
    return None


def outputs(messages: list[dict]) -> list[tuple[int, str]]:
    """(iteration, output text) of every REPL output still in the conversation; the
    summary request itself is cut off the last one."""
    found = []
    for message in messages:
        if message.get("role") != "user":
            continue
        text = text_of(message.get("content"))
        head = _OUTPUT_HEAD.match(text)
        if head:
            body = _REQUEST.split(text[head.end():])[0]
            found.append((int(head.group(1)), body))
    return found


def first_lines(text: str) -> str:
    lines = [line.strip()[:LINE_CHARS] for line in text.splitlines() if line.strip()]
    return " / ".join(lines[:LINES_PER_OUTPUT]) or "(no output)"


def summarise(messages: list[dict]) -> str:
    """A summary in a model's words of the turns it was sent."""
    parts = [f"Question I am working on: {root_question(messages)}"]
    earlier = earlier_summary(messages)
    if earlier:
        parts.append(f"From my earlier summary: {earlier}")
    seen = outputs(messages)
    if seen:
        parts.append("What my code showed since then:" if earlier else "What my code showed:")
        parts += [f"- iteration {k}: {first_lines(text)}" for k, text in seen]
        variables = _VARIABLES.findall(seen[-1][1])
        if variables:
            parts.append(f"Variables in the REPL: {variables[-1]}")
    steps = [int(k) for _, text in seen for k in _STEP_DONE.findall(text)]
    steps += [int(k) for k in _EARLIER_STEPS.findall(earlier or "")]
    if steps:
        parts.append(f"Steps of my plan completed: 1 to {max(steps)}.")
    partial = _PARTIAL.findall(earlier or "")
    partial += [p for _, text in seen for p in _SO_FAR.findall(text)]
    if partial:
        parts.append(f"Partial answer so far: {partial[-1].strip()}")
    parts.append("Next step: continue from the last output above; the full earlier turns are "
                 "in `history` if I need a detail.")
    return "\n".join(parts)
