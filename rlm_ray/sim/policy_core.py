"""The machinery of the scripted root policy: reading the conversation, the
family registry, and the stage runner.

The policy is stateless: every reply is a function of the messages alone.
Progress is read back from the REPL output: each stage's code ends by
printing a `STEP_DONE k` marker, so a missing marker (an error, a cut-off)
means "stage k failed, try its fallback", and `answer so far: ...` lines give
a forced final turn something to answer with.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from rlm_ray.sim.registry import question_in, text_of

STEP_MARKER = "STEP_DONE"
SO_FAR = "answer so far:"
MAX_TURNS = 6            # after this many REPL outputs the next reply FINALs, whatever failed
MAX_ATTEMPTS = 2         # per stage: the normal code, then one simpler fallback

# The first block of a run, as real models start: look at the context before using it.
PREVIEW = """\
if isinstance(context, str):
    print(f'context is a str of {len(context)} characters; it starts:')
    print(context[:500])
else:
    print(context)
    print({k: v for k, v in context.stats.items() if not isinstance(v, (dict, list))})"""

_OUTPUT_HEAD = re.compile(r"^REPL output \(iteration (\d+)\):")
_STEP_DONE = re.compile(rf"^{STEP_MARKER} (\d+)\s*$", re.MULTILINE)
_SO_FAR = re.compile(rf"^{SO_FAR} (.*)$", re.MULTILINE)
_ERROR_LINE = re.compile(r"^Error:", re.MULTILINE)
# After the engine compacted the conversation, the policy's own summary (policy_summary)
# stands for the older turns: how many replies, which steps of the plan, the partial answer.
_SUMMARY = re.compile(r"^Summary of my work so far \(replies 1 to (\d+)\):")
_SUMMARY_STEPS = re.compile(r"^Steps of my plan completed: 1 to (\d+)\.", re.MULTILINE)
_SUMMARY_SO_FAR = re.compile(r"^Partial answer so far: (.*)$", re.MULTILINE)


@dataclass(frozen=True)
class ReplOutput:
    iteration: int
    text: str

    @property
    def error(self) -> bool:
        return bool(_ERROR_LINE.search(self.text))

    @property
    def steps_done(self) -> list[int]:
        return [int(k) for k in _STEP_DONE.findall(self.text)]


@dataclass(frozen=True)
class Conversation:
    is_root: bool
    question: str
    outputs: tuple[ReplOutput, ...]
    forced_final: bool       # the engine asked for FINAL(...) in plain text
    last_user: str
    compacted_replies: int = 0     # replies an engine compaction folded into a summary
    summary_steps: int = 0         # stages that summary says were completed
    summary_answer: str | None = None

    @classmethod
    def parse(cls, messages: list[dict]) -> "Conversation":
        is_root = any(m.get("role") == "system" for m in messages)
        users = [text_of(m.get("content")) for m in messages if m.get("role") == "user"]
        question = question_in(users[0]) if users else ""
        outputs = []
        for text in users[1:]:
            head = _OUTPUT_HEAD.match(text)
            if head:
                outputs.append(ReplOutput(int(head.group(1)), text))
        last = users[-1] if users else ""
        replies, steps, partial = 0, 0, None
        for message in messages:
            text = text_of(message.get("content"))
            head = _SUMMARY.match(text) if message.get("role") == "assistant" else None
            if head:
                replies = int(head.group(1))
                steps = max((int(k) for k in _SUMMARY_STEPS.findall(text)), default=0)
                so_far = _SUMMARY_SO_FAR.findall(text)
                partial = so_far[-1].strip() if so_far else None
        return cls(is_root=is_root, question=question, outputs=tuple(outputs),
                   forced_final=len(users) > 1 and last.startswith("Final answer required"),
                   last_user=last, compacted_replies=replies, summary_steps=steps,
                   summary_answer=partial)

    @property
    def turns(self) -> int:
        """REPL outputs of the whole run, those folded into a summary included."""
        return self.compacted_replies + len(self.outputs)

    def stages_done(self) -> int:
        return max((k for o in self.outputs for k in o.steps_done), default=self.summary_steps)

    def failed_attempts(self) -> int:
        """Outputs since the last one that completed a stage: failed tries of the next stage."""
        done = self.stages_done()
        failures = 0
        for output in reversed(self.outputs):
            if done and done in output.steps_done:
                break
            failures += 1
        return failures

    def answer_so_far(self) -> str | None:
        for output in reversed(self.outputs):
            found = _SO_FAR.findall(output.text)
            if found:
                return found[-1].strip()
        return self.summary_answer

    def last_output(self) -> str:
        return self.outputs[-1].text if self.outputs else ""


@dataclass(frozen=True)
class Step:
    """What a stage function gets: the question's match, the conversation so far,
    and which attempt at this stage this is (0 = first, 1 = after an error)."""
    match: re.Match
    conv: Conversation
    attempt: int


@dataclass(frozen=True)
class Code:
    """A stage's reply, laid out as real models write one (prose around code,
    several blocks, the finish on its own line after the prose):

        plan / [preview block] / [code block + stage marker] / [look block] /
        after / FINAL_VAR(final) or FINAL(final_value)
    """
    plan: str
    code: str = ""                 # the stage's work; the stage marker is printed after it
    preview: str = ""              # a first block: a look at the context before the work
    look: str = ""                 # a block after the work: a look at what it produced
    after: str = ""                # prose after the code
    final: str = ""                # finish with `FINAL_VAR(<final>)`, unquoted, on its own line
    final_value: str = ""          # or with `FINAL(<final_value>)` (a reply without code)


StageFn = Callable[[Step], Code]


@dataclass(frozen=True)
class Family:
    name: str
    pattern: re.Pattern
    stages: tuple[StageFn, ...] = field(default=())


# First match wins, so more specific phrasings register before general ones.
FAMILIES: list[Family] = []


def register_family(name: str, pattern: str, *stages: StageFn) -> Family:
    if any(f.name == name for f in FAMILIES):
        raise ValueError(f"policy family {name!r} is registered twice")
    family = Family(name, re.compile(pattern, re.IGNORECASE), tuple(stages))
    FAMILIES.append(family)
    return family


def find_family(question: str, families: list[Family]) -> tuple[Family, re.Match]:
    # A family is a phrasing: a question wrapped over several lines asks the same thing.
    phrasing = " ".join(question.split())
    for family in families:
        match = family.pattern.fullmatch(phrasing)
        if match:
            return family, match
    # policies.py registers a catch-all last, so this means a registry bug.
    raise LookupError(f"no policy family matches {question!r}")


def block(code: str) -> str:
    return f"```repl\n{code.strip()}\n```"


def render(code: Code, stage_number: int) -> str:
    parts = [code.plan]
    if code.preview:
        parts += [block(code.preview), "Now the actual step:"]
    if code.code:
        # The marker ends the work block: it is printed only if everything before it ran.
        parts.append(block(f"{code.code.rstrip()}\nprint({STEP_MARKER!r}, {stage_number})"))
    if code.look:
        parts.append(block(code.look))
    if code.after:
        parts.append(code.after)
    if code.final:
        parts.append(f"FINAL_VAR({code.final})")
    elif code.final_value:
        parts.append(f"FINAL({code.final_value})")
    return "\n\n".join(parts)


def give_up(conv: Conversation, reason: str) -> str:
    """A reply that always ends the run, with whatever partial answer exists."""
    fallback = f"could not determine the answer ({reason})"
    if conv.forced_final:
        return f"FINAL({conv.answer_so_far() or fallback})"
    return "\n\n".join([
        f"I will stop here ({reason}) and answer with what I have so far.",
        block(f"final_answer = answer.get('content') or {fallback!r}\nprint(final_answer)"),
        "That is my best answer.", "FINAL_VAR(final_answer)"])


def run_family(family: Family, match: re.Match, conv: Conversation,
               finish: Callable[[Code], Code] | None = None) -> str:
    """The next reply of `family`; `finish` reshapes a finishing stage (typed answers)."""
    if conv.forced_final:
        return give_up(conv, "the engine asked for a final answer")
    done, failures = conv.stages_done(), conv.failed_attempts()
    if conv.turns >= MAX_TURNS:
        return give_up(conv, f"{MAX_TURNS} turns used")
    if failures >= MAX_ATTEMPTS:
        return give_up(conv, f"step {done + 1} failed {failures} times")
    if done >= len(family.stages):
        return give_up(conv, "all steps ran without a FINAL")
    stage = family.stages[done]
    code = stage(Step(match, conv, failures))
    return render(finish(code) if finish else code, done + 1)
