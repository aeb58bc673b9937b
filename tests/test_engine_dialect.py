"""Issue 10, engine side: the dialect real models write. Each numbered case of
the issue's "What was seen" drives the REAL engine (real sandbox, litellm over
HTTP to the provider SIMULATOR) with a scripted root policy whose replies are
written the way real models write them (prose around code, FINAL_VAR on its
own line, `answer` as a loop variable). `local=True`: these are not about actors.
Expected answers are computed here from the test's own data, never copied."""
from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from rlm_ray.engine import RLM, EngineSettings, parsing, prompts
from rlm_ray.sim import register_policy
from rlm_ray.sim.registry import last_user_text

WORDS = ("alpha beta gamma beta delta alpha beta " * 40).strip()
SUB_MODEL = "openai/test/dialect-sub"


def _outputs(messages):
    return [m["content"] for m in messages
            if m["role"] == "user" and m["content"].startswith("REPL output")]


def _scripted(name: str, *replies: str, forced: str = "FINAL(forced)"):
    """A root policy answering reply k at turn k (the last one repeats); sub-calls
    (no system message) get `sub:<first words of the prompt>`."""

    @register_policy(name)
    def policy(messages):
        if not any(m.get("role") == "system" for m in messages):
            return "sub:" + " ".join(last_user_text(messages).split()[:3])
        if last_user_text(messages).startswith("Final answer required"):
            return forced
        turn = len(_outputs(messages))
        return replies[min(turn, len(replies) - 1)]
    return policy


@register_policy("test/dialect-sub")
def sub_model(messages):
    return "sub:" + " ".join(last_user_text(messages).split()[:3])


def _rlm(server, model: str, **kw) -> RLM:
    kw.setdefault("local", True)
    return RLM(f"openai/{model}", kw.pop("sub_model", SUB_MODEL), api_base=server.base_url, **kw)


# ---- 1. prose, then FINAL_VAR(x) on its own line ------------------------------------------
_scripted("test/d1",
          "I'll count the words first.\n```repl\nimport json\nfrom collections import Counter\n"
          "result_json = json.dumps(dict(Counter(context.split())), sort_keys=True)\n"
          "print(result_json[:50])\n```",
          "The counts are computed and stored in `result_json`.\n\nFINAL_VAR(result_json)")


def test_1_final_var_on_its_own_line_after_prose(sim):
    result = _rlm(sim(), "test/d1").answer(WORDS, "Count each word.")
    assert result.status == "ok", result.error
    assert json.loads(result.answer) == dict(Counter(WORDS.split()))
    assert result.iterations == 2


# ---- 2. FINAL_VAR(name) unquoted inside a repl block ------------------------------------
_scripted("test/d2",
          "Let me find the longest word.\n```repl\nfinal_answer = max(context.split(), key=len)\n"
          "FINAL_VAR(final_answer)\n```")


def test_2_final_var_unquoted_inside_code(sim):
    result = _rlm(sim(), "test/d2").answer(WORDS, "Which word is longest?")
    assert (result.status, result.answer) == ("ok", max(WORDS.split(), key=len))
    assert result.steps[0]["error"] is None


# ---- 3. `answer` as a variable and as a loop variable -----------------------------------
_scripted("test/d3",
          "First a sub-call, then a loop.\n```repl\nanswer = llm_query('Summarise: ' + context[:40])\n"
          "answers = [llm_query(f'word {w}') for w in sorted(set(context.split()))]\n"
          "for i, answer in enumerate(answers):\n    print(i, answer)\n```",
          "Now I combine them.\n```repl\nfinal = ' | '.join(answers)\nFINAL_VAR('final')\n```")


def test_3_answer_rebound_by_the_model_does_not_break_finishing(sim):
    result = _rlm(sim(), "test/d3").answer(WORDS, "Describe the words.")
    expected = " | ".join(f"sub:word {w}" for w in sorted(set(WORDS.split())))
    assert (result.status, result.answer) == ("ok", expected), result.error
    assert all(s["error"] is None for s in result.steps)


# ---- 4. code plus FINAL_VAR in one reply (normal turn and forced turn) -------------------
_scripted("test/d4",
          "I'll compute it and finish.\n```repl\ntotal = len(context.split())\n"
          "print(total)\n```\n\nFINAL_VAR(total)")
_scripted("test/d4-forced",
          "Exploring.\n```repl\nprint(context[:30])\n```",
          forced="Here is my final computation.\n```repl\nlast = sorted(set(context.split()))[-1]\n"
                 "```\nFINAL_VAR(last)")


def test_4_code_and_final_var_in_one_reply(sim):
    server = sim()
    result = _rlm(server, "test/d4").answer(WORDS, "How many words?")
    assert (result.status, result.answer, result.iterations) == ("ok", str(len(WORDS.split())), 1)
    forced = _rlm(server, "test/d4-forced", max_iterations=1).answer(WORDS, "Last word?")
    assert (forced.status, forced.answer) == ("max_iterations", sorted(set(WORDS.split()))[-1])


# ---- 5. one view per block, with the true hidden size -----------------------------------
PREVIEW_CHARS = 30_000
_VIEW_NOTE = re.compile(r"\[output truncated: (\d+) of (\d+) characters not shown")


@register_policy("test/d5")
def per_block_views(messages):
    """Prints a long context preview, then the columns; then reports what it saw."""
    outputs = _outputs(messages)
    if not outputs:
        return ("Let me look at the data.\n```repl\nprint(context[:%d])\n```\n"
                "And the columns:\n```repl\nimport json\nrows = json.loads(context[%d:])\n"
                "print('COLUMNS:', sorted(rows[0]))\n```" % (PREVIEW_CHARS, PREVIEW_CHARS))
    seen = outputs[-1]
    columns = re.search(r"^COLUMNS: (.*)$", seen, re.MULTILINE)
    note = _VIEW_NOTE.search(seen)
    return "FINAL(%s)" % json.dumps({"columns": columns.group(1) if columns else None,
                                     "note": note.groups() if note else None})


def test_5_each_block_gets_its_own_view_and_the_true_hidden_size(sim):
    rows = [{"user": "u1", "score": 3, "label": "x"}]
    context = "p" * PREVIEW_CHARS + json.dumps(rows)
    result = _rlm(sim(), "test/d5").answer(context, "What are the columns?")
    seen = json.loads(result.answer)
    assert seen["columns"] == str(sorted(rows[0]))
    hidden, total = map(int, seen["note"])
    printed = PREVIEW_CHARS + 1                      # print() adds the newline
    assert total == printed
    assert 0 < hidden < printed and hidden == printed - EngineSettings().view_chars


def test_5_views_share_the_turn_cap_fairly():
    from rlm_ray.engine.feedback import allocate

    assert allocate([50_000, 100, 50_000], 20_000, 30_000) == [14_950, 100, 14_950]
    assert allocate([10, 20], 20_000, 30_000) == [10, 20]


# ---- 6. official signatures, model=, SHOW_VARS, reserved names ---------------------------
_scripted("test/d6",
          "Set up.\n```repl\ncontext = context[:100]\nllm_query = None\n"
          "r = llm_query_batched(['one a', 'two b'], model='test/dialect-sub')\nprint(r)\n```",
          "Check.\n```repl\nparts = [str(len(context)), llm_query('three c', model=None)]\n"
          "try:\n    rlm_query('four d', 'gpt-5-mini')\nexcept Exception as exc:\n"
          "    parts.append(type(exc).__name__ + ': ' + str(exc))\nparts.append(SHOW_VARS())\n"
          "report = '\\n'.join(parts)\n```\nFINAL_VAR(report)")


def test_6_official_signatures_and_reserved_names(sim):
    result = _rlm(sim(), "test/d6").answer(WORDS, "Check the REPL.")
    assert result.status == "ok", result.error
    length, sub, error, show = result.answer.split("\n")
    assert length == str(len(WORDS))                 # `context = context[:100]` was undone
    assert sub == "sub:three c"                       # `llm_query = None` was undone
    assert error.startswith("ValueError: rlm_query: model 'gpt-5-mini' is not allowed")
    assert "r (list, 2 items)" in show and "parts (list, 3 items)" in show
    assert not any(c["kind"] == "rlm" for c in result.calls)   # the name was not sent as context
    assert sum(c["kind"] == "sub" and c["model"] == SUB_MODEL for c in result.calls) == 3
    assert all(s["error"] is None for s in result.steps)


# ---- 8. answer content, any value as text, FINAL_VAR(undefined), --text prompt -----------
_scripted("test/d8-content",
          "```repl\nanswer['content'] += 'part one'\nanswer['content'] += ', part two'\n"
          "answer['ready'] = True\n```")
_scripted("test/d8-set", "```repl\nanswer['content'] = {'only'}\nanswer['ready'] = True\n```")
_scripted("test/d8-list", "```repl\nFINAL(['a', 2, {'b': None}])\n```")


@register_policy("test/d8-undefined")
def undefined_var(messages):
    outputs = _outputs(messages)
    if not outputs:
        return "I have the answer.\nFINAL_VAR(undefined_result)"
    return "FINAL(%s)" % json.dumps(outputs[-1])


def test_8_answer_values_become_text(sim):
    server = sim()
    content = _rlm(server, "test/d8-content").answer(WORDS, "q")
    assert (content.status, content.answer) == ("ok", "part one, part two")
    as_set = _rlm(server, "test/d8-set").answer(WORDS, "q")
    assert (as_set.status, as_set.answer) == ("ok", str({"only"}))
    as_list = _rlm(server, "test/d8-list").answer(WORDS, "q")
    assert (as_list.status, json.loads(as_list.answer)) == ("ok", ["a", 2, {"b": None}])


def test_8_final_var_of_an_undefined_name_says_so(sim):
    result = _rlm(sim(), "test/d8-undefined").answer(WORDS, "q")
    seen = result.answer                  # FINAL("...") of a string literal is unquoted
    assert "no variable named 'undefined_result'" in seen
    assert "no ```repl``` block" not in seen


def test_8_text_prompt_has_no_corpus_only_advice():
    settings = prompts.PromptSettings(sub_window_tokens=1000, view_chars=100, max_iterations=5,
                                      max_rows=10)
    text = prompts.system_prompt("str", settings)
    for corpus_only in ("context.stats", "context.sql", "context.grep", "docs(", "schema"):
        assert corpus_only not in text
    assert "context.stats" in prompts.system_prompt("corpus", settings)
