"""Built-in simple policies of the SIMULATOR (the scripted RLM root policy lives
in `policies.py`, owned by the engine). Each is deterministic in its input.

- `sim/echo`    replies with the last user message, verbatim.
- `sim/fixed`   replies "ok".
- `sim/extract` a sub-model stand-in that answers from the text it was given:
                the prompt's question (between `<question>` / `</question>`
                lines, else its `Question:` line) gives keywords (words of 3+
                letters, lower-cased, minus stop words); every other
                non-empty line is candidate text; the reply is the first line
                containing the largest number of distinct keywords (whole
                words, case-insensitive), stripped; "NOT FOUND" if no line
                contains any keyword or the prompt names no question.
- `sim/count`   counts, in the prompt, whole-word case-sensitive occurrences
                of the first quoted word ('w' or "w"), not counting the quote
                itself; replies with the integer, or "0" if nothing is quoted.
"""
from __future__ import annotations

import re

from rlm_ray.sim.registry import QUESTION_BLOCK, last_user_text, register_policy

_WORD = re.compile(r"[A-Za-z0-9_]{3,}")
_QUOTED = re.compile(r"""'([^'\s]+)'|"([^"\s]+)\"""")
_STOP_WORDS = frozenset(
    "the and for are was were what which who whom whose when where why how does did "
    "with from into that this these those there their about give tell find question "
    "text answer many much any all has have had not but you your its".split()
)
NOT_FOUND = "NOT FOUND"


@register_policy("sim/echo")
def echo(messages: list[dict]) -> str:
    return last_user_text(messages)


@register_policy("sim/fixed")
def fixed(messages: list[dict]) -> str:
    return "ok"


def _keywords(question: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(question)} - _STOP_WORDS


@register_policy("sim/extract")
def extract(messages: list[dict]) -> str:
    text = last_user_text(messages)
    block = QUESTION_BLOCK.search(text)
    if block:   # the question between tag lines (rlm-ray's layout); the rest is candidate text
        question, lines = block.group(1), (text[:block.start()] + text[block.end():]).splitlines()
    else:
        lines = text.splitlines()
        question_at = next((i for i, line in enumerate(lines) if "Question:" in line), None)
        if question_at is None:
            return NOT_FOUND
        question = lines.pop(question_at).split("Question:", 1)[1]
    keywords = _keywords(question)
    best_line, best_score = NOT_FOUND, 0
    for line in lines:
        if not line.strip():
            continue
        score = len(keywords & {w.lower() for w in _WORD.findall(line)})
        if score > best_score:  # strict: the first line wins ties
            best_line, best_score = line.strip(), score
    return best_line


@register_policy("sim/count")
def count(messages: list[dict]) -> str:
    text = last_user_text(messages)
    match = _QUOTED.search(text)
    if not match:
        return "0"
    word = match.group(1) or match.group(2)
    rest = text[: match.start()] + text[match.end():]
    return str(len(re.findall(rf"(?<!\w){re.escape(word)}(?!\w)", rest)))
