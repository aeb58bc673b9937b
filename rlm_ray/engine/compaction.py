"""Compaction of the root conversation: what keeps a long run inside the root
model's input window.

A root conversation only grows (every reply and every REPL view stays), so a
model that explores for 30 turns would pass a 128k window, and a 32k one
after a handful of turns. Before each root call the loop asks `needs_compaction`;
when the conversation is past `fraction` of the window, `plan` splits it: the
system prompt and the question stay, the latest turns stay verbatim, and the
older turns go to the root model once more with `SUMMARY_REQUEST`. Its summary
replaces them (`compacted`), and the REPL receives the full history as the
variable `history`. The wording is ours; the shape (summarise near 85% of the
window, full history in the REPL) follows the official RLM scaffold.

Message layout of a compacted conversation (roles keep alternating):
    system | user: question + metadata | assistant: summary |
    user: COMPACTED_NOTE (names the replies it covers) | latest turns...
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from rlm_ray.tokens import chat_prompt_tokens, content_text

DEFAULT_FRACTION = 0.85          # compact once the conversation passes this share of the window
KEEP_LATEST_REPLIES = 2          # replies (with their REPL views) kept verbatim
PREFIX_MESSAGES = 2              # system prompt + question: never compacted
SUMMARY_ALLOWANCE_TOKENS = 2_000  # room assumed for the summary when sizing what is kept
MIN_VIEW_CHARS = 400             # a message shown to the summary call is never cut below this
HISTORY_NAME = "history"

SUMMARY_REQUEST = """\
Summary required: this conversation is close to your context window ({window} tokens). Your \
replies 1 to {replies} and their REPL outputs are about to be replaced by a summary that you \
write now, and you will continue the work from that summary. The REPL itself is not touched: \
every variable you created stays, and the full earlier conversation will be in the REPL variable \
`{history}`.{cut}

Write the summary for yourself, in plain text (no code blocks, no FINAL):
- what you have established so far: facts, values, partial results, with the exact numbers, \
names and identifiers;
- what you have already examined (which parts of the context, ranges, documents, searches) and \
what each showed, so you do not repeat it;
- the variables that hold your results and what each holds;
- what remains to be done, and your next step."""

SUMMARY_CUT_NOTE = (" Some earlier messages are shown shortened here to fit the window; "
                    "they are complete in `{history}`.")

COMPACTED_NOTE = """\
Context compacted: your replies 1 to {replies} and their REPL outputs were replaced by your \
summary above, to stay within the context window. The REPL is unchanged: every variable you \
created still exists. The full earlier conversation is in the REPL variable `{history}`: a list \
of {{"role", "content"}} dicts in order (system prompt, question, then each of your replies and \
its REPL output); print slices of it or search it if you need a detail the summary lacks. \
Continue from where you stopped."""

SUMMARY_HEAD = "Summary of my work so far (replies 1 to {replies}):\n"
_COMPACTED = re.compile(r"^Context compacted: your replies 1 to (\d+)\b")
_WINDOW_IN_ERROR = re.compile(r"maximum context length is (\d+) tokens", re.IGNORECASE)


def root_window(settings, model: str, gateway) -> int | None:
    """The root model's input window: the configured one (0 = compaction off ->
    None), else litellm's table (None when the model is not in it)."""
    if settings.root_window_tokens is not None:
        return settings.root_window_tokens or None
    from rlm_ray.llm.cost import context_window

    return context_window(model, gateway)


def conversation_tokens(messages: list[dict]) -> int:
    """Prompt tokens of a chat request (an estimate for tokenizers other than
    cl100k, which the fraction's headroom absorbs)."""
    return chat_prompt_tokens(messages)


def window_from_error(message: str) -> int | None:
    """The window a provider names in its context_length_exceeded message, if it does."""
    found = _WINDOW_IN_ERROR.search(message or "")
    return int(found.group(1)) if found else None


def compacted_replies(messages: list[dict]) -> int:
    """How many replies an earlier compaction folded into the summary (0 if none)."""
    for message in messages[PREFIX_MESSAGES:PREFIX_MESSAGES + 2]:
        if message.get("role") == "user":
            found = _COMPACTED.match(content_text(message.get("content")))
            if found:
                return int(found.group(1))
    return 0


@dataclass(frozen=True)
class Plan:
    """One compaction: which messages are summarised and which stay."""

    older: list[dict]          # live messages after the prefix that the summary replaces
    kept: list[dict]           # the latest turns, verbatim
    replies: int               # replies 1..replies are covered by the summary


def plan(messages: list[dict], limit_tokens: int) -> Plan | None:
    """Split the live conversation; None when there is nothing older to summarise.
    Keeps up to KEEP_LATEST_REPLIES replies, fewer when they alone would not fit."""
    live = messages[PREFIX_MESSAGES:]
    starts = [i for i, m in enumerate(live) if m.get("role") == "assistant"]
    earlier = compacted_replies(messages)
    # The summary + note of an earlier compaction are not replies of their own.
    own = [i for i in starts if not (earlier and i == 0)]
    if not own:
        return None
    head = messages[:PREFIX_MESSAGES]
    for keep in range(min(KEEP_LATEST_REPLIES, len(own)), -1, -1):
        cut = own[len(own) - keep] if keep else len(live)
        if not any(i < cut for i in own):
            continue
        kept, older = live[cut:], live[:cut]
        fits = conversation_tokens(head + kept) + SUMMARY_ALLOWANCE_TOKENS <= limit_tokens
        if fits or keep == 0:
            replies = earlier + sum(1 for i in own if i < cut)
            return Plan(older, kept, replies)
    return None


def summary_request(messages: list[dict], step: Plan, window: int,
                    limit_tokens: int) -> tuple[list[dict], bool]:
    """The summary call's messages: the prefix, the older turns (shortened if the
    whole would not fit under `limit_tokens`) and SUMMARY_REQUEST. (messages, cut?)"""
    head = messages[:PREFIX_MESSAGES]

    def build(older: list[dict], cut: bool) -> list[dict]:
        note = SUMMARY_CUT_NOTE.format(history=HISTORY_NAME) if cut else ""
        ask = SUMMARY_REQUEST.format(window=window, replies=step.replies,
                                     history=HISTORY_NAME, cut=note)
        # Older turns end with a user message (a REPL view): fold the request into it
        # so roles keep alternating.
        if older and older[-1].get("role") == "user":
            last = older[-1]
            older = older[:-1] + [{"role": "user", "content":
                                   content_text(last.get("content")) + "\n\n" + ask}]
            return head + older
        return head + older + [{"role": "user", "content": ask}]

    whole = build(step.older, False)
    if conversation_tokens(whole) <= limit_tokens:
        return whole, False
    # Shorten each older message to head and tail, halving until it fits; at the
    # floor, drop the oldest turns (the earlier summary, if any, goes last).
    chars = max(len(content_text(m.get("content"))) for m in step.older)
    older = step.older
    while chars > MIN_VIEW_CHARS:
        chars //= 2
        older = [shorten(m, chars) for m in step.older]
        candidate = build(older, True)
        if conversation_tokens(candidate) <= limit_tokens:
            return candidate, True
    while len(older) > 2 and conversation_tokens(build(older, True)) > limit_tokens:
        older = older[2:]
    return build(older, True), True


def shorten(message: dict, chars: int) -> dict:
    text = content_text(message.get("content"))
    if len(text) <= chars:
        return {"role": message.get("role"), "content": text}
    half = max(chars // 2, 1)
    hidden = len(text) - 2 * half
    middle = f"\n[... {hidden} characters not shown here; see `{HISTORY_NAME}` ...]\n"
    return {"role": message.get("role"), "content": text[:half] + middle + text[-half:]}


def compacted(messages: list[dict], step: Plan, summary: str) -> list[dict]:
    """The conversation after compaction (layout in the module docstring)."""
    return [*messages[:PREFIX_MESSAGES],
            {"role": "assistant", "content": SUMMARY_HEAD.format(replies=step.replies)
             + summary.strip()},
            {"role": "user", "content": COMPACTED_NOTE.format(replies=step.replies,
                                                              history=HISTORY_NAME)},
            *step.kept]
