"""The policy registry: model name (as the simulator sees it) -> reply function.

A policy is a pure, deterministic function of the chat messages. Policies are
how the rest of the project is exercised without a real model, so they must
derive answers from the messages they are sent (and, for the engine's
`sim/rlm-policy`, from the REPL output the engine feeds back), never from any
side channel.
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from rlm_ray.tokens import content_text

Policy = Callable[[list[dict]], str]

POLICIES: dict[str, Policy] = {}


class PolicyRefusal(Exception):
    """A policy's deliberate refusal: the simulator answers 400 `replay_mismatch`
    with this message (a replay that drifted from its recording, for instance)."""

# Modules that register policies when imported. `policies` belongs to the RLM
# engine owner and may not exist yet; the built-ins always do.
_POLICY_MODULES = ("rlm_ray.sim.basic_policies", "rlm_ray.sim.policies",
                   "rlm_ray.sim.policy_explore")
_OPTIONAL_POLICY_MODULES = frozenset({"rlm_ray.sim.policies"})


def register_policy(name: str) -> Callable[[Policy], Policy]:
    """Decorator: `@register_policy("sim/echo")` makes `model="sim/echo"` answer with it."""

    def decorate(fn: Policy) -> Policy:
        if name in POLICIES and POLICIES[name] is not fn:
            raise ValueError(f"simulator policy {name!r} is registered twice")
        POLICIES[name] = fn
        return fn

    return decorate


def load_policies() -> dict[str, Policy]:
    """Import every policy module once (idempotent) and return the registry."""
    for name in _POLICY_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # Only the absence of an optional module itself is tolerated; a
            # missing dependency *inside* it is a real error and must surface.
            if name not in _OPTIONAL_POLICY_MODULES or exc.name != name:
                raise
    return POLICIES


# Message content as plain text: the one reading the token counts use too.
text_of = content_text


def last_user_text(messages: list[dict]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return text_of(message.get("content"))
    return ""


# The question of a root prompt, read as a model reads it: the text between a
# `<question>` line and the LAST `</question>` line (rlm-ray's layout,
# docs/architecture.md: the question may quote the tag), else the rest of a
# `Question:` line (how a prompt written by hand, or by another scaffold,
# labels its question).
QUESTION_BLOCK = re.compile(r"^<question>\n(.*)\n</question>[ \t]*$", re.DOTALL | re.MULTILINE)
_QUESTION_LINE = re.compile(r"^[ \t]*Question:[ \t]*(.*?)[ \t]*$", re.MULTILINE)


def question_in(prompt: str) -> str:
    """The question `prompt` asks, exactly as written ("" when it names none)."""
    block = QUESTION_BLOCK.search(prompt)
    if block:
        return block.group(1)
    line = _QUESTION_LINE.search(prompt)
    return line.group(1) if line else ""


def root_question(messages: list[dict]) -> str:
    """The question of a root conversation: the one its first user message asks."""
    first = next((m for m in messages if m.get("role") == "user"), None)
    return question_in(text_of(first.get("content"))) if first else ""
