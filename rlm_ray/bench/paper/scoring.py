"""Each benchmark's own scoring rule, written from its published definition.

- OOLONG (synth): the gold `answer` column is a Python list literal whose
  first element is the answer (dates as `[datetime.date(Y, M, D)]`); the
  model's output is reduced to its answer part as OOLONG's evaluation does
  (the text after the last ':', without '*', '[' and ']'; a short reply as
  is, a long one without ':' by its last word), then: equal -> 1; a
  comparison answer ("more common", ...) contained in the gold -> 1;
  `ANSWER_TYPE.NUMERIC` -> 0.75 ** |gold - prediction|; `ANSWER_TYPE.DATE` ->
  1 if the dates are equal; else 0.
- OOLONG-Pairs: F1 between the set of `(id, id)` pairs in the answer and the
  gold set (unordered pairs; both empty -> 1).
- LongBench-v2: accuracy of the extracted choice letter ("The correct answer
  is (X)" or "... is X", after dropping '*'); an answer that is only a letter
  (what an RLM's FINAL often returns) counts as that letter.
- BrowseComp-Plus: a judge model's yes/no on "does the response give the
  correct answer" (the benchmark grades with a judge); without one, the
  labelled fallback `contains` (the normalised gold appears in the answer).
- S-NIAH: RULER's string match: the needle's value appears in the answer.
"""
from __future__ import annotations

import ast
import datetime as dt
import re
import string
from dataclasses import dataclass

from rlm_ray.batch.scoring import set_f1

COMPARISONS = ("more common", "less common", "same frequency")
_PAIR = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_CHOICE_PATTERNS = (re.compile(r"The correct answer is \(([A-D])\)"),
                    re.compile(r"The correct answer is ([A-D])"))
_BARE_CHOICE = re.compile(r"^\(?([A-D])\)?\.?$")
# Date spellings a model writes for OOLONG's date answers (the official
# evaluation parses with dateutil, which this project does not depend on).
_DATE_FORMATS = ("%Y-%m-%d", "%b %d, %Y", "%B %d, %Y", "%d %B %Y", "%d %b %Y", "%m/%d/%Y",
                 "%Y/%m/%d", "%b %d %Y", "%B %d %Y")


@dataclass(frozen=True)
class Scored:
    score: float          # in [0, 1]
    extracted: str        # what the rule read out of the answer
    method: str           # the rule applied (a fallback says so)


# -- OOLONG ------------------------------------------------------------------
def oolong_gold(answer: str) -> object:
    """The gold value of an OOLONG-synth `answer` cell."""
    if "datetime" in answer:
        return dt.datetime.strptime(answer.strip(), "[datetime.date(%Y, %m, %d)]")
    try:
        value = ast.literal_eval(answer)
    except (ValueError, SyntaxError):
        return answer
    return value[0] if isinstance(value, (list, tuple)) and value else value


def oolong_extract(output: str) -> str:
    """The answer part of a model's reply, as OOLONG's evaluation reads it."""
    output = output.strip()
    if ":" not in output:
        if len(output) < 20:
            return output
        words = output.split()
        return words[-1] if words else ""
    candidate = output.split(":")[-1].strip()
    for junk in ("*", "[", "]"):
        candidate = candidate.replace(junk, "")
    candidate = candidate.strip()
    if len(candidate) >= 20:
        for phrase in COMPARISONS:
            if phrase in candidate:
                return phrase
    return candidate


def _parse_date(text: str) -> dt.datetime | None:
    text = text.strip().rstrip(".")
    for fmt in _DATE_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


def score_oolong(answer: str | None, expected: str, answer_type: str) -> Scored:
    gold = oolong_gold(expected)
    got = oolong_extract(answer or "")
    rule = "OOLONG's rule (exact; numeric 0.75^|diff|)"
    if got == str(gold):
        return Scored(1.0, got, rule)
    if got in COMPARISONS:
        return Scored(1.0 if got in str(gold) else 0.0, got, rule)
    if answer_type == "ANSWER_TYPE.NUMERIC":
        try:
            return Scored(0.75 ** abs(int(gold) - int(got)), got, rule)
        except (TypeError, ValueError):
            return Scored(0.0, got, rule)
    if answer_type == "ANSWER_TYPE.DATE":
        return Scored(1.0 if _parse_date(got) == gold else 0.0, got, rule)
    return Scored(0.0, got, rule)


# -- OOLONG-Pairs --------------------------------------------------------------
def pairs_in(text: str) -> set[tuple[int, int]]:
    """Unordered `(a, b)` pairs written anywhere in `text`."""
    found = set()
    for a, b in _PAIR.findall(text or ""):
        x, y = int(a), int(b)
        found.add((min(x, y), max(x, y)))
    return found




def score_pairs(answer: str | None, gold_pairs: list[str]) -> Scored:
    predicted = pairs_in(answer or "")
    gold = pairs_in("\n".join(gold_pairs))
    return Scored(set_f1(predicted, gold), f"{len(predicted)} pairs", "F1 over pairs")


# -- LongBench-v2 --------------------------------------------------------------
def extract_choice(answer: str | None) -> str | None:
    text = (answer or "").replace("*", "")
    for pattern in _CHOICE_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1)
    bare = _BARE_CHOICE.match(text.strip())
    return bare.group(1) if bare else None


def score_choice(answer: str | None, gold_letter: str) -> Scored:
    letter = extract_choice(answer)
    return Scored(1.0 if letter == gold_letter.strip().upper() else 0.0, letter or "",
                  "multiple-choice letter")


# -- BrowseComp-Plus / S-NIAH ---------------------------------------------------
def normalise(text: str) -> str:
    lowered = (text or "").lower()
    kept = "".join(" " if ch in string.punctuation else ch for ch in lowered)
    return " ".join(kept.split())


def score_contains(answer: str | None, expected: str, rule: str) -> Scored:
    gold = normalise(expected)
    hit = bool(gold) and f" {gold} " in f" {normalise(answer or '')} "
    return Scored(1.0 if hit else 0.0, "found" if hit else "", rule)


JUDGE_PROMPT = """\
You grade an answer to a hard research question against the known correct answer.

Question:
{question}

Response to grade:
{response}

Correct answer:
{correct}

Decide only whether the response's final answer states the same thing as the correct
answer (small differences in wording or formatting, and small numerical rounding, are
fine; a different, hedged-between-several or missing answer is not). Do not solve the
question yourself. Reply with one line: `correct: yes` or `correct: no`."""

_VERDICT = re.compile(r"correct\s*:\s*\**\s*(yes|no)", re.IGNORECASE)


def judge_verdict(reply: str) -> bool | None:
    match = _VERDICT.search(reply or "")
    return None if match is None else match.group(1).lower() == "yes"
