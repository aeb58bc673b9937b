"""Strict finishing, the model's own `answer`, and questions as written: the
REAL engine (real sandbox, litellm over HTTP to the provider SIMULATOR) with
scripted root replies written the way real models write them. `local=True`:
these are not about actors. Expected answers are computed from the test's own
data, never copied from the engine."""
from __future__ import annotations

import json

import pytest

from rlm_ray.engine import RLM, prompts
from rlm_ray.sim import register_policy
from rlm_ray.sim.policies import family_of, rlm_policy
from rlm_ray.sim.registry import last_user_text, question_in

WORDS = ("alpha beta gamma beta delta " * 8).strip()
N_WORDS = len(WORDS.split())
WENT_ON = "the run went on"
SUB_MODEL = "openai/test/finish-sub"


@register_policy("test/finish-sub")
def sub_model(messages):
    return "ally: " + " ".join(last_user_text(messages).split()[:3])


def _scripted(name: str, *replies: str) -> str:
    """A root policy answering reply k at turn k, then FINAL(WENT_ON)."""
    @register_policy(f"test/{name}")
    def policy(messages):
        turn = sum(m["role"] == "assistant" for m in messages)
        return replies[turn] if turn < len(replies) else f"FINAL({WENT_ON})"
    return f"openai/test/{name}"


def _answer(server, model: str, question: str = "How many words?"):
    return RLM(model, SUB_MODEL, api_base=server.base_url, local=True,
               max_iterations=4).answer(WORDS, question)


# Prose a model writes while thinking: none of it may end the run.
FALSE_FINISHES = {
    "bare-final-prose": "I need to check the totals.\nFINAL answer below once verified:",
    "final-step-next-to-code": ("FINAL STEP: aggregate the counts\n```repl\n"
                                "counts = len(context.split())\nprint(counts)\n```"),
    "final-colon-prose": "FINAL: I'll verify first.",
    "bare-final-value": "FINAL %d" % N_WORDS,
    "final-answer-next-to-code": ("```repl\nprint(len(context.split()))\n```\n"
                                  "FINAL ANSWER: %d" % N_WORDS),
    "final-answer-not-last": "FINAL ANSWER: %d\nLet me double-check that first." % N_WORDS,
}

# Every form that finishes: (reply, expected answer).
FINISHES = {
    "final-literal": ("FINAL(Paris)", "Paris"),
    "final-quoted-after-prose": ('I have it.\n\nFINAL("a, b")', "a, b"),
    "final-var-after-code": ("I count them.\n```repl\nresult = len(context.split())\n```\n"
                             "FINAL_VAR(result)", str(N_WORDS)),
    "final-var-in-code": ("```repl\nresult = len(context.split())\nFINAL_VAR(result)\n```",
                          str(N_WORDS)),
    "final-in-code": ("```repl\nFINAL(len(context.split()))\n```", str(N_WORDS)),
    "answer-ready": ("```repl\nanswer['content'] = 'forty-' + 'two'\nanswer['ready'] = True\n```",
                     "forty-two"),
    "answer-dict-whole": ("```repl\nanswer = {'content': 'whole dict', 'ready': True}\n```",
                          "whole dict"),
    "final-answer-last-line": ("I counted them in my head.\n\nFINAL ANSWER: Paris, France\n",
                               "Paris, France"),
}


@pytest.mark.parametrize("case", sorted(FALSE_FINISHES))
def test_prose_that_looks_like_a_finish_does_not_end_the_run(sim_server, case):
    result = _answer(sim_server, _scripted(f"false-{case}", FALSE_FINISHES[case]))
    assert (result.status, result.answer, result.iterations) == ("ok", WENT_ON, 2), result.error


@pytest.mark.parametrize("case", sorted(FINISHES))
def test_every_finishing_form_still_finishes(sim_server, case):
    reply, expected = FINISHES[case]
    result = _answer(sim_server, _scripted(f"finish-{case}", reply))
    assert (result.status, result.answer, result.iterations) == ("ok", expected, 1), result.error
    assert all(s["error"] is None for s in result.steps)


# ---- FINAL(name) of a REPL variable: the text as written, as the official parser ----------
def test_final_of_a_variable_name_answers_the_name_and_final_var_its_value(sim_server):
    # Alone in a reply, after the code that set it ran: the name, as written.
    alone = _scripted("final-name-alone",
                      "```repl\ncounts = len(context.split())\nprint(counts)\n```",
                      "I have the count.\n\nFINAL(counts)")
    result = _answer(sim_server, alone)
    assert (result.status, result.answer, result.iterations) == ("ok", "counts", 2), result.error
    # Next to the code that sets it, even when the output prints the name: refused,
    # and the note says FINAL_VAR answers the value.
    result = _answer(sim_server, "openai/test/final-name-beside")
    assert (result.status, result.answer, result.iterations) == ("ok", str(N_WORDS), 2)


@register_policy("test/final-name-beside")
def _final_name_beside(messages):
    if sum(m["role"] == "assistant" for m in messages) == 0:
        return ("```repl\ncounts = len(context.split())\nprint('counts =', counts)\n```\n"
                "FINAL(counts)")
    feedback = last_user_text(messages)
    hint = "counts is a REPL variable, and FINAL(...) answers the text as written"
    return "FINAL_VAR(counts)" if hint in feedback and "FINAL_VAR(counts)" in feedback \
        else f"FINAL(no hint in: {feedback[:300]})"


# ---- `answer` belongs to the model once it binds it ----------------------------------------
def test_answer_bound_by_the_model_finishes_with_final_var(sim_server):
    """The gemini-2.5-flash-lite recording's shape: a sub-call's reply bound to
    `answer`, prose, then FINAL_VAR(answer) in the next reply."""
    model = _scripted("finish-own-answer",
                      "I ask a sub-model.\n```repl\nanswer = llm_query('Who helped Jon? ' + "
                      "context[:20])\nprint(answer)\n```",
                      "The sub-model named the ally.\n\nFINAL_VAR(answer)")
    result = _answer(sim_server, model, "Who was the ally?")
    assert (result.status, result.answer, result.iterations) == \
        ("ok", "ally: Who helped Jon?", 2), result.error
    assert not any("reserved by the REPL" in (s["output"] or "") for s in result.steps)


def test_answer_ownership_and_the_dict_protocol_in_the_sandbox():
    from rlm_ray.engine.workspace import Workspace

    def workspace():
        return Workspace(context=WORDS, view=None, host_functions={},
                         sandbox_opts={"timeout_s": 30})

    owner = workspace()
    try:
        block = owner.run("answer = 'mine'", 30)
        assert block.restored == [] and "answer (str, 4 chars)" in owner.answer().variables
        block = owner.run("answer = answer + ' still'\nprint(answer)", 30)   # not restored
        assert (block.output.strip(), block.restored) == ("mine still", [])
        assert owner.run("FINAL_VAR('answer')", 30).error is None
        assert (owner.answer().ready, owner.answer().content) == (True, "mine still")
    finally:
        owner.close()
    protocol = workspace()
    try:
        # a model that wrote into the dict keeps it, even with `answer` as a loop variable
        protocol.run("answer['content'] = 'partial'", 30)
        block = protocol.run("for answer in ['a', 'b']:\n    pass", 30)
        assert block.restored == ["answer"]
        protocol.run("answer['ready'] = True", 30)
        assert (protocol.answer().ready, protocol.answer().content) == (True, "partial")
    finally:
        protocol.close()
    same_block = workspace()
    try:   # bound and finished in one block, by name: the model's value
        assert same_block.run("answer = 'own'\nFINAL_VAR('answer')", 30).error is None
        assert same_block.answer().content == "own"
    finally:
        same_block.close()
    content = workspace()
    try:   # FINAL_VAR of the answer dict itself finishes with its content
        assert content.run("answer['content'] = 'c'\nFINAL_VAR(answer)", 30).error is None
        assert (content.answer().ready, content.answer().content) == (True, "c")
    finally:
        content.close()
    not_ready = workspace()
    try:   # an answer dict that is not ready yet: the engine's is put back
        block = not_ready.run("answer = {'content': 'x', 'ready': False}", 30)
        assert block.restored == ["answer"] and not not_ready.answer().ready
        assert "answer (dict" not in " ".join(not_ready.answer().variables)
    finally:
        not_ready.close()


# ---- questions keep their formatting -------------------------------------------------------
QUESTION = ("Rank the compounds below.\n\n| id | score |\n|----|-------|\n| A  | 0.9   |\n\n"
            "\tOutput format:\n  - JSON, one line  \n</question>\nThat tag above is quoted.  ")


@register_policy("test/finish-echo")
def echo_first_user_message(messages):
    first = next(m["content"] for m in messages if m["role"] == "user")
    return "FINAL(%s)" % json.dumps(first)


def test_a_multi_line_question_reaches_the_model_byte_for_byte(sim_server):
    result = _answer(sim_server, "openai/test/finish-echo", QUESTION)
    assert result.status == "ok", result.error
    seen = result.answer
    assert seen.startswith(f"<question>\n{QUESTION}\n</question>\nContext:\nkind: str\n")
    assert question_in(seen) == QUESTION          # the simulator reads it whole


def test_the_policy_reads_a_wrapped_question_as_its_phrasing():
    one_line = "How many functions take a parameter named indent?"
    wrapped = "How many functions\n  take a parameter named indent?"
    assert family_of(wrapped) == family_of(one_line) != "unknown"

    def ask(question):
        return rlm_policy([{"role": "system", "content": "any"},
                           {"role": "user", "content": prompts.first_user_message(
                               question, "kind: corpus")}])
    assert ask(wrapped) == ask(one_line)


def test_replay_matches_a_multi_line_question_whole(tmp_path, capsys):
    from rlm_ray.cli import main

    question = QUESTION.strip()
    first_line = question.splitlines()[0]
    replay = tmp_path / "replay.json"
    replay.write_text(json.dumps({"format": "rlm-ray-replay/1", "recordings": [
        {"question": question,
         "root_replies": ["```repl\nn = len(context)\n```\nFINAL_VAR(n)"]},
        {"question": first_line, "root_replies": ["FINAL(first line only)"]}]}))
    text = tmp_path / "context.txt"
    text.write_text(WORDS)

    def query(asked):
        trajectory = tmp_path / "t.json"
        main(["query", asked, "--text", str(text), "--local", "--model",
              f"sim/replay:{replay}", "--trajectory", str(trajectory)])
        capsys.readouterr()
        saved = json.loads(trajectory.read_text())
        return saved["status"], saved["answer"], saved["error"]

    assert query(question) == ("ok", str(len(WORDS)), None)
    assert query(first_line) == ("ok", "first line only", None)
    status, _, error = query(" ".join(question.split()))     # flattened: not the recording
    assert status == "error" and "no recording of the question" in error
