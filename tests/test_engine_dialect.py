"""Engine side: the dialect real models write. Each numbered case drives the
REAL engine (real sandbox, litellm over HTTP to the provider SIMULATOR) with a
scripted root policy whose replies are written the way real models write them
(prose around code, FINAL_VAR on its own line, `answer` as a loop variable).
`local=True`: these are not about actors. Expected answers are computed here
from the test's own data, never copied."""
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
          "First a sub-call, then a loop.\n```repl\n"
          "answer = llm_query('Summarise: ' + context[:40])\n"
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


# ---- feedback: refused literal FINAL, python fences, variables -----------------------------
@register_policy("test/d-feedback")
def feedback_reader(messages):
    """Turn 1: a literal FINAL next to code (refused). Turn 2: only a ```python block.
    Turn 3: FINALs what the two feedback messages said."""
    outputs = _outputs(messages)
    if not outputs:
        return "Counting.\n```repl\nn_words = len(context.split())\nprint(n_words)\n```\nFINAL(999)"
    if len(outputs) == 1:
        return "Now the characters.\n```python\nn_chars = len(context)\nprint(n_chars)\n```"
    return "FINAL(%s)" % json.dumps(json.dumps(outputs))


_scripted("test/d-grounded",
          "Counting, and I expect %d.\n```repl\nprint('words:', len(context.split()))\n```\n"
          "FINAL(%d)" % (len(WORDS.split()), len(WORDS.split())))


def test_literal_final_next_to_code_stands_when_the_output_shows_it(sim):
    result = _rlm(sim(), "test/d-grounded").answer(WORDS, "How many words?")
    assert (result.status, result.answer, result.iterations) == ("ok", str(len(WORDS.split())), 1)


def test_feedback_explains_refusals_python_fences_and_lists_variables(sim):
    result = _rlm(sim(), "test/d-feedback").answer(WORDS, "How long is it?")
    assert result.status == "ok" and result.iterations == 3
    first, second = json.loads(result.answer)
    assert "FINAL(999) was not accepted" in first and "same reply as code" in first
    assert str(len(WORDS.split())) in first and "REPL variables: n_words (int)" in first
    assert "```python block(s) were run" in second and str(len(WORDS)) in second
    assert "n_chars (int)" in second


# ---- bring your own prompt ------------------------------------------------------------------
@register_policy("test/d-sys")
def echo_system_prompt(messages):
    system = next(m["content"] for m in messages if m["role"] == "system")
    return "FINAL(%s)" % json.dumps(system.splitlines()[0])


TEMPLATE = "MY PROMPT max={max_iterations} kind={context_kind} code={'kept': {x}}\n{context_api}"


def test_system_prompt_file_on_the_query_cli(sim, tmp_path, capsys):
    from rlm_ray.cli import main

    server = sim()
    (tmp_path / "prompt.txt").write_text(TEMPLATE)
    (tmp_path / "in.txt").write_text(WORDS)
    argv = ["query", "q?", "--text", str(tmp_path / "in.txt"), "--model", "openai/test/d-sys",
            "--api-base", server.base_url, "--local", "--max-iterations", "3",
            "--trajectory", str(tmp_path / "t.json")]
    assert main(argv + ["--system-prompt", str(tmp_path / "prompt.txt")]) == 0
    out, _ = capsys.readouterr()
    assert out.strip() == "MY PROMPT max=3 kind=str code={'kept': {x}}"
    assert main(argv) == 0                      # the built-in prompt stays the default
    assert capsys.readouterr()[0].strip() == prompts.SYSTEM_PROMPT.splitlines()[0]
    assert main(argv + ["--system-prompt", str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr()[1]
    assert "cannot read --system-prompt" in err and "Traceback" not in err


def test_allow_list_picks_models_and_refuses_others(sim):
    server = sim()
    rlm = _rlm(server, "test/d6", allowed_models=["openai/test/dialect-sub", "openai/sim/echo"])
    assert rlm.allowed_models == (SUB_MODEL, "openai/sim/echo")
    from rlm_ray.engine.subcalls import SubCalls

    class _Spec:   # only what _pick reads
        model, sub_model, allowed_models = "openai/root", SUB_MODEL, rlm.allowed_models
    picker = SubCalls.__new__(SubCalls)
    picker.spec = _Spec()
    assert picker._pick("sim/echo", picker._sub_models(), SUB_MODEL, "f") == "openai/sim/echo"
    full = picker._pick("openai/sim/echo", picker._sub_models(), SUB_MODEL, "f")
    assert full == "openai/sim/echo"
    assert picker._pick(None, picker._sub_models(), SUB_MODEL, "f") == SUB_MODEL
    with pytest.raises(ValueError, match="not allowed"):
        picker._pick("gpt-5-mini", picker._sub_models(), SUB_MODEL, "llm_query")


# ---- parsing units --------------------------------------------------------------------------
@pytest.mark.parametrize("reply, expected", [
    ("Done.\n\nFINAL_VAR(result_json)", ("var", "result_json")),
    ("prose\n  FINAL_VAR('x')\nmore prose", ("var", "'x'")),
    ("FINAL(The answer is Bob's car (red))", ("value", "The answer is Bob's car (red)")),
    ('FINAL("a, b")', ("value", '"a, b"')),
    ("FINAL(\n  multi\n  line\n)", ("value", "multi\n  line")),
    ("FINAL(x)\nFINAL_VAR(y)", ("var", "y")),          # FINAL_VAR first, as the official parser
    ("I will call FINAL(x) once I know x.", None),      # not at the start of a line
    # a real-model form (rlm#37, reply 5, paraphrased): FINAL_VAR named in a sentence before
    # a verification block is a plan, not a finish
    ("I will check it, then provide FINAL_VAR(output) as the answer.\n\n```repl\n"
     "print(len(output))\n```\n", None),
    ("```repl\nprint(345)\n```\nFINAL 345", None),     # no parentheses: prose (strict finishing)
    ("FINAL ANSWER: Paris, France", ("value", "Paris, France")),   # last line, no code
    ("FINAL_ANSWER is pending", None),
    ("no final here", None),
])
def test_find_final(reply, expected):
    final = parsing.find_final(reply)
    assert (final and (final.kind, final.arg)) == expected


def test_code_blocks_prefer_repl_and_fall_back_to_python():
    both = "```python\nnot_run()\n```\n```repl\nx = 1\n```\nFINAL_VAR(x)"
    code = parsing.code_blocks(both)
    assert (code.fence, code.blocks) == ("repl", ["x = 1"])
    assert "FINAL_VAR(x)" in code.rest and "x = 1" not in code.rest
    only_python = parsing.code_blocks("Plan\n```python\ny = 2\n```\n```py\nz = 3\n```")
    assert (only_python.fence, only_python.blocks) == ("python", ["y = 2", "z = 3"])
    assert parsing.code_blocks("just prose").blocks == []
    cut_off = parsing.code_blocks("```repl\na = 1\n```\ntext\n```repl\nb = 2\nprint(b)")
    assert cut_off.blocks == ["a = 1", "b = 2\nprint(b)"]   # a reply cut off inside a block


def test_literal_and_variable_forms():
    assert parsing.literal_text('"quoted"') == "quoted"
    assert parsing.literal_text("42 apples") == "42 apples"
    assert parsing.variable_source("name") == "FINAL_VAR('name')"
    assert parsing.variable_source("'name'") == "FINAL_VAR('name')"
    assert parsing.variable_source('d["k"]') == 'FINAL_VAR(d["k"])'


@pytest.mark.timeout(300)
def test_system_prompt_on_the_run_cli_and_per_row(ray_session, sim, tmp_path, capsys):
    from rlm_ray.batch.tables import read_run
    from rlm_ray.cli import main

    server = sim()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("def f(x):\n    return x\n")
    corpus = str(tmp_path / "corpus")
    assert main(["ingest", str(tmp_path / "src"), "--out", corpus]) == 0
    queries = tmp_path / "q.jsonl"
    rows = [{"query_id": "file", "question": "q1"},
            {"query_id": "row", "question": "q2", "system_prompt": "ROW PROMPT {context_kind}"}]
    queries.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "prompt.txt").write_text(TEMPLATE)
    code = main(["run", corpus, "--queries", str(queries), "--out", str(tmp_path / "out"),
                 "--model", "openai/test/d-sys", "--api-base", server.base_url,
                 "--max-iterations", "3", "--system-prompt", str(tmp_path / "prompt.txt"),
                 "--no-progress", "--concurrency", "2"])
    assert code == 0, capsys.readouterr()[1]
    answers = read_run(str(tmp_path / "out")).answers.to_pylist()
    got = {a["query_id"]: a["answer"] for a in answers}
    assert got == {"file": "MY PROMPT max=3 kind=corpus code={'kept': {x}}",
                   "row": "ROW PROMPT corpus"}


# ---- the prelude in a real sandbox, no model -------------------------------------------------
def test_prelude_semantics_in_the_sandbox():
    from rlm_ray.engine.workspace import Workspace

    workspace = Workspace(context=WORDS, view=None, sandbox_opts={"timeout_s": 30},
                          host_functions={"llm_query": lambda prompt, model=None: "host"})
    try:
        def run(code):
            block = workspace.run(code, 30)
            return block, workspace.answer()

        block, state = run("context = 'short'\ndel llm_query\ndel answer\nx = [1, 2]\n"
                           "class Weird:\n    def __len__(self):\n        raise RuntimeError\n"
                           "w = Weird()")
        assert block.error is None and not state.ready
        assert sorted(block.restored) == ["answer", "context", "llm_query"]
        assert "x (list, 2 items)" in state.variables and "w (Weird)" in state.variables
        block, state = run("print(len(context), llm_query('p'))")
        assert block.output.split() == [str(len(WORDS)), "host"]
        block, state = run("FINAL_VAR('nope')")
        assert "no variable named 'nope'" in block.error and not state.ready
        block, state = run("answer['ready'] = True")          # ready, but nothing to answer
        assert (state.ready, state.flagged_empty) == (False, True)
        block, state = run("answer = {'content': {'a'}, 'ready': True}")   # a whole dict, adopted
        assert (state.ready, state.content, block.restored) == (True, str({"a"}), [])
    finally:
        workspace.close()


@pytest.mark.parametrize("code, expected", [
    ("name = 'Paris'\nFINAL_VAR(name)", "Paris"),               # unquoted: the value
    ("name = 'Paris'\nFINAL_VAR('name')", "Paris"),             # quoted: the variable
    ("FINAL_VAR(6 * 7)", "42"),                                  # a value
    ("FINAL_VAR('two words')", "two words"),                     # not a name: a value
    ("FINAL({'k': [1, None]})", '{"k": [1, null]}'),             # dicts become JSON
])
def test_final_var_forms(code, expected):
    from rlm_ray.engine.workspace import Workspace

    workspace = Workspace(context="", view=None, host_functions={},
                          sandbox_opts={"timeout_s": 30})
    try:
        assert workspace.run(code, 30).error is None
        assert (workspace.answer().ready, workspace.answer().content) == (True, expected)
    finally:
        workspace.close()
