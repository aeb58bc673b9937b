"""Replay mode of the provider SIMULATOR: serve recorded conversations.

A replay file (JSON) holds one or more recordings of a model running an RLM
scaffold. The simulator answers the model name `sim/replay` from it:

- a ROOT call (a system message is present) is matched to a recording by its
  question: the one the first user message asks (`registry.question_in`: the
  text between `<question>` and `</question>` lines, a multi-line question
  whole), equal to the recorded question up to surrounding whitespace.
  The reply is the recording's root reply number N, N = the assistant messages
  already in the conversation (stateless, so retries, resumes and parallel
  questions replay correctly); after a compaction, the replies the engine's note
  says its summary stands for, plus the assistant messages after that note. The
  engine's compaction request (`Summary required:`) is answered with a summary
  of the conversation (policy_summary) and consumes no recorded reply.
- a SUB call (no system message) is answered by rule, in this order: a
  recorded sub-call whose `prompt` equals the prompt; the first
  `prompt_contains` rule whose text occurs in it; the recording's `sub_default`
  (only when the file has one recording, or the prompt names its question).

Replies are served VERBATIM: a replay never rewrites what a model wrote. When
no recording matches, or the recording has no reply left, the call is refused
with a 400 (`replay_mismatch`) whose message says why, so a replay that drifts
from its recording fails loudly instead of inventing a turn.

File format (`format: "rlm-ray-replay/1"`):

    {"format": "rlm-ray-replay/1",
     "recordings": [{
        "question": "...",              # required, the key
        "root_replies": ["...", ...],   # required, in order
        "sub_calls": [{"prompt": "...", "reply": "..."}],
        "sub_rules": [{"prompt_contains": "...", "reply": "..."}],
        "sub_default": "...",
        "context": "...",               # optional: the str context the run saw
        "answer": "...",                # optional: the answer the run recorded
        "source": {...}, "model": "...", "notes": "..."}]}   # provenance, ignored here
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from rlm_ray.errors import UserError
from rlm_ray.sim.policy_summary import is_summary_request, summarise
from rlm_ray.sim.registry import PolicyRefusal, last_user_text, question_in, text_of

REPLAY_MODEL = "sim/replay"
FORMAT = "rlm-ray-replay/1"
# The engine's note after a compaction: its summary stands for replies 1..N.
_COMPACTED = re.compile(r"^Context compacted: your replies 1 to (\d+)\b")


@dataclass(frozen=True)
class Recording:
    question: str
    root_replies: tuple[str, ...]
    sub_calls: dict[str, str] = field(default_factory=dict)       # exact prompt -> reply
    sub_rules: tuple[tuple[str, str], ...] = ()                   # (substring, reply)
    sub_default: str | None = None
    context: str | None = None
    answer: str | None = None

    @classmethod
    def from_dict(cls, raw: dict, where: str) -> Recording:
        if not isinstance(raw, dict):
            raise UserError(f"{where}: a recording must be a JSON object")
        question, replies = raw.get("question"), raw.get("root_replies")
        if not isinstance(question, str) or not question.strip():
            raise UserError(f"{where}: 'question' must be a non-empty string")
        if not isinstance(replies, list) or not replies or not all(
                isinstance(r, str) for r in replies):
            raise UserError(f"{where}: 'root_replies' must be a non-empty list of strings")
        try:
            sub_calls = {str(c["prompt"]): str(c["reply"]) for c in raw.get("sub_calls", [])}
            sub_rules = tuple((str(r["prompt_contains"]), str(r["reply"]))
                              for r in raw.get("sub_rules", []))
        except (KeyError, TypeError):
            raise UserError(f"{where}: 'sub_calls' need prompt+reply, 'sub_rules' "
                            "need prompt_contains+reply") from None
        default = raw.get("sub_default")
        return cls(question=question.strip(), root_replies=tuple(replies), sub_calls=sub_calls,
                   sub_rules=sub_rules, sub_default=None if default is None else str(default),
                   context=raw.get("context"), answer=raw.get("answer"))


@dataclass(frozen=True)
class Replay:
    """The recordings of one replay file; `reply(messages)` is the `sim/replay` policy."""

    recordings: tuple[Recording, ...]
    source: str = "<memory>"

    @classmethod
    def load(cls, path: str | Path) -> Replay:
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise UserError(f"cannot read replay file {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise UserError(f"replay file {path} is not valid JSON: {exc}") from None
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "<memory>") -> Replay:
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise UserError(f"replay file {source}: expected a JSON object with "
                            f"\"format\": \"{FORMAT}\"")
        items = raw.get("recordings")
        if not isinstance(items, list) or not items:
            raise UserError(f"replay file {source}: 'recordings' must be a non-empty list")
        recordings = tuple(Recording.from_dict(item, f"replay file {source}, recording {i}")
                           for i, item in enumerate(items))
        seen: set[str] = set()
        for rec in recordings:
            if rec.question in seen:
                raise UserError(f"replay file {source}: two recordings of the question "
                                f"{rec.question[:80]!r}")
            seen.add(rec.question)
        return cls(recordings, source)

    # -- the policy ---------------------------------------------------------
    def reply(self, messages: list[dict]) -> str:
        if any(m.get("role") == "system" for m in messages):
            return self._root_reply(messages)
        return self._sub_reply(last_user_text(messages))

    def _root_reply(self, messages: list[dict]) -> str:
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        if not users:
            raise PolicyRefusal("replay: a root call without a user message")
        first = text_of(messages[users[0]].get("content"))
        recording = self._match_question(first)
        if is_summary_request(messages):
            # A compaction is the engine's, not the recorded model's: answer it with a
            # summary of what the conversation shows and leave the recording where it is.
            return summarise(messages)
        turn = replies_so_far(messages[users[0]:])
        if turn >= len(recording.root_replies):
            raise PolicyRefusal(
                f"replay: the recording of {recording.question[:80]!r} has "
                f"{len(recording.root_replies)} root replies and the engine asked for reply "
                f"{turn + 1} (the run did not end where the recorded run ended)")
        return recording.root_replies[turn]

    def _match_question(self, first_user: str) -> Recording:
        asked = question_in(first_user).strip()
        if not asked:
            raise PolicyRefusal("replay: the first user message asks no question (no "
                                "<question> ... </question> lines, no `Question:` line)")
        for recording in self.recordings:
            if recording.question == asked:
                return recording
        raise PolicyRefusal(f"replay: no recording of the question "
                            f"{asked.splitlines()[0][:120]!r} in {self.source}")

    def _sub_reply(self, prompt: str) -> str:
        for rec in self.recordings:
            if prompt in rec.sub_calls:
                return rec.sub_calls[prompt]
        for rec in self.recordings:
            for needle, reply in rec.sub_rules:
                if needle in prompt:
                    return reply
        defaults = [r for r in self.recordings if r.sub_default is not None]
        named = [r for r in defaults if r.question in prompt]
        if named:
            return named[0].sub_default
        if len(self.recordings) == 1 and defaults:
            return defaults[0].sub_default
        raise PolicyRefusal(f"replay: no recorded sub-call reply matches the prompt "
                            f"{prompt[:120]!r} in {self.source}")


def replies_so_far(messages: list[dict]) -> int:
    """Replies the model has written in this run: the assistant messages, where a
    compaction's summary + note stand for the N replies the note names."""
    for index, message in enumerate(messages):
        if message.get("role") == "user":
            found = _COMPACTED.match(text_of(message.get("content")))
            if found:
                return int(found.group(1)) + sum(1 for m in messages[index:]
                                                 if m.get("role") == "assistant")
    return sum(1 for m in messages if m.get("role") == "assistant")


def load_replay(replay: str | Path | Replay | dict | None) -> Replay | None:
    """A `Replay` from a path, a parsed dict, or itself (None stays None)."""
    if replay is None or isinstance(replay, Replay):
        return replay
    if isinstance(replay, dict):
        return Replay.from_dict(replay)
    return Replay.load(replay)
