"""Root loops that survive a full-length run: the SIMULATOR enforces a 32k-token
window over HTTP, `sim/explorer` reads a 450k-character context 15,000
characters a turn (~30 turns), and the real engine (real sandbox, litellm)
compacts its conversation, or, with compaction off, ends with the provider's
context_length_exceeded. Nothing here is mocked."""
from __future__ import annotations

import random

import pytest

from rlm_ray.engine import RLM
from rlm_ray.engine import compaction
from rlm_ray.llm.config import GatewayConfig

WINDOW = 32_000
EXPLORER = "openai/sim/explorer"
SUBJECT = "the access code of vault 7"
VALUE = "5521-KT"
QUESTION = f"What is {SUBJECT}?"
PIECE = 15_000
PIECES = 30


def _haystack(seed: int = 7) -> str:
    """30 pieces of sensor log lines; the answer line sits inside piece 29, away
    from the piece edges, so a reader finds it only on its ~30th turn."""
    rng = random.Random(seed)
    stations = ["north", "south", "east", "west", "harbour", "ridge"]
    lines, size, n = [], 0, 0
    target = PIECE * (PIECES - 2) + PIECE // 2
    placed = False
    while size < PIECE * PIECES - 200:
        if not placed and size >= target:
            line = f"Maintenance memo: {SUBJECT[0].upper()}{SUBJECT[1:]} is {VALUE}."
            placed = True
        else:
            line = (f"entry {n:06d}: sensor {rng.randint(1, 99)} at station "
                    f"{rng.choice(stations)}-{rng.randint(1, 9)} read {rng.random():.4f}, "
                    f"status {rng.choice(['nominal', 'nominal', 'drift', 'recalibrated'])}")
        lines.append(line)
        size += len(line) + 1
        n += 1
    return "\n".join(lines)


@pytest.fixture(scope="module")
def haystack() -> str:
    return _haystack()


@pytest.fixture
def window_sim(sim):
    """A SIMULATOR that gives sim/explorer a 32k window (other models keep 128k)."""
    return sim(model_windows={"sim/explorer": WINDOW})


def _rlm(server, **kwargs) -> RLM:
    gateway = GatewayConfig(max_retries=1, backoff_s=0.01, timeout_s=60.0)
    return RLM(EXPLORER, api_base=server.base_url, local=True, max_iterations=45,
               gateway=gateway, **kwargs)


def _rows(result, kind: str) -> list[dict]:
    return [c for c in result.calls if c["kind"] == kind]


def test_simulator_enforces_a_per_model_window(window_sim):
    from rlm_ray.llm import complete
    from rlm_ray.llm.types import LLMError

    config = GatewayConfig(api_base=window_sim.base_url, max_retries=0)
    long_prompt = [{"role": "user", "content": "word " * 33_000}]
    with pytest.raises(LLMError) as info:
        complete(long_prompt, EXPLORER, config=config)
    assert info.value.kind == "context_length" and f"is {WINDOW} tokens" in str(info.value)
    # The same prompt fits the server's default window for another model.
    assert complete(long_prompt, "openai/sim/echo", config=config).prompt_tokens > WINDOW
    assert window_sim.stats()["by_status"] == {400: 1, 200: 1}


def test_a_30_turn_run_compacts_and_finishes_ok(window_sim, haystack):
    result = _rlm(window_sim, root_window=WINDOW).answer(haystack, QUESTION)
    assert result.status == "ok", result.error
    assert result.answer == VALUE
    assert result.iterations >= PIECES          # it really read ~30 pieces
    roots, compacts = _rows(result, "root"), _rows(result, "compact")
    assert len(roots) == result.iterations and len(compacts) >= 3
    # Every root call stayed under the window; none was refused.
    assert all(c["status"] == "ok" for c in result.calls)
    assert max(c["prompt_tokens"] for c in roots) <= WINDOW
    # Compactions are costed calls (tokens in the usage), not iterations.
    assert all(c["prompt_tokens"] > 0 and c["completion_tokens"] > 0 for c in compacts)
    assert result.usage["compact_calls"] == len(compacts)
    assert result.usage["input_tokens"] == sum(c["prompt_tokens"] for c in result.calls)
    # One steps row per compaction, under the compact call's id, holding its summary.
    marks = [s for s in result.steps if s["code"].startswith("# context compacted")]
    assert {s["call_id"] for s in marks} == {c["call_id"] for c in compacts}
    assert all("I have read pieces 1 to" in s["output"] and s["error"] is None for s in marks)
    # The model saw `history` in the REPL after a compaction, and the REPL state the
    # first turn made (`piece`, `pieces`) survived every compaction.
    looked = [s for s in result.steps if "earlier messages in `history`" in s["output"]]
    assert looked and all(s["error"] is None for s in result.steps)   # no NameError
    assert int(looked[0]["output"].split()[0]) > 10    # messages `history` held then


def test_the_same_run_without_compaction_ends_with_context_length_exceeded(window_sim,
                                                                            haystack):
    result = _rlm(window_sim, root_window=0).answer(haystack, QUESTION)
    assert result.status == "error"
    assert "context_length_exceeded" in result.error
    assert result.iterations < PIECES and not _rows(result, "compact")
    assert _rows(result, "root")[-1]["status"] == "error"


def test_a_context_length_exceeded_compacts_and_retries_once(window_sim, haystack):
    """The engine believes the window is 64k; the provider refuses at 32k. The
    refusal compacts (against the window the provider named) and the call is
    retried once; later turns compact before they would be refused again."""
    result = _rlm(window_sim, root_window=2 * WINDOW).answer(haystack, QUESTION)
    assert result.status == "ok", result.error
    assert result.answer == VALUE
    refused = [i for i, c in enumerate(result.calls) if c["status"] == "error"]
    assert len(refused) == 1
    after = result.calls[refused[0] + 1:]
    assert after[0]["kind"] == "compact" and after[1]["kind"] == "root"
    assert after[1]["status"] == "ok"
    marks = [s for s in result.steps if s["code"].startswith("# context compacted")]
    assert "context_length_exceeded" in marks[0]["code"]
    assert len(marks) >= 2       # and it kept compacting before each refusal


# ---- the compaction plan (pure functions) ---------------------------------------
def _conversation(turns: int, output_chars: int) -> list[dict]:
    messages = [{"role": "system", "content": "system prompt"},
                {"role": "user", "content": "Question: q\nContext:\nkind: str"}]
    for k in range(1, turns + 1):
        messages += [{"role": "assistant", "content": f"reply {k}\n```repl\nprint({k})\n```"},
                     {"role": "user", "content": f"REPL output (iteration {k}):\n"
                                                 + "data " * (output_chars // 5)}]
    return messages


def test_plan_keeps_the_prefix_and_latest_replies_and_counts_replies_across_compactions():
    messages = _conversation(6, 4000)
    step = compaction.plan(messages, 20_000)
    assert step.replies == 4 and step.kept[0]["content"].startswith("reply 5")
    after = compaction.compacted(messages, step, "my summary")
    assert after[:2] == messages[:2] and compaction.compacted_replies(after) == 4
    assert [m["role"] for m in after] == ["system", "user", "assistant", "user",
                                          "assistant", "user", "assistant", "user"]
    after += _conversation(8, 4000)[-4:]            # replies 7 and 8
    again = compaction.plan(after, 20_000)
    assert again.replies == 6                      # 4 summarised before + replies 5 and 6


def test_a_summary_view_too_long_for_the_window_is_shortened_not_dropped():
    messages = _conversation(3, 60_000)             # one output alone passes the limit
    step = compaction.plan(messages, 8_000)
    assert step is not None and step.replies >= 2
    request, cut = compaction.summary_request(messages, step, 10_000, 8_000)
    assert cut and compaction.conversation_tokens(request) <= 8_000
    assert "complete in `history`" in request[-1]["content"]
    assert "characters not shown here" in request[-1]["content"]


def test_nothing_to_compact_before_the_first_reply():
    assert compaction.plan(_conversation(0, 0), 10) is None


def test_window_from_a_provider_message():
    text = "This model's maximum context length is 32000 tokens. However, you requested 40000"
    assert compaction.window_from_error(text) == 32000
    assert compaction.window_from_error("rate limited") is None


def test_replay_answers_compaction_without_consuming_a_recorded_reply(sim, haystack):
    """A recorded run whose outputs overflow a 12k window: the engine compacts
    between recorded replies, the replay answers each summary request itself, and
    every recorded reply is served once, in order (the answer lists them)."""
    reads = [f"Reading part {k}.\n```repl\nseen = globals().get('seen', []) + [{k}]\n"
             f"print(context[{(k - 1) * PIECE}:{k * PIECE}])\n```" for k in range(1, 6)]
    finish = "All parts read.\n```repl\nparts = ','.join(map(str, seen))\n```\nFINAL_VAR(parts)"
    replay = {"format": "rlm-ray-replay/1",
              "recordings": [{"question": "Which parts were read?",
                              "root_replies": [*reads, finish]}]}
    server = sim(replay=replay, model_windows={"sim/replay": 12_000})
    rlm = RLM("openai/sim/replay", api_base=server.base_url, local=True, max_iterations=10,
              gateway=GatewayConfig(max_retries=0), root_window=12_000)
    result = rlm.answer(haystack, "Which parts were read?")
    assert result.status == "ok", result.error
    assert result.answer == "1,2,3,4,5"
    assert result.iterations == 6 and len(_rows(result, "compact")) >= 2
    assert server.stats()["by_status"] == {200: len(result.calls)}


# ---- the CLI: `query --model sim/<policy>@TOKENS`, --root-window ---------------------
def test_query_compacts_against_the_window_the_in_process_simulator_enforces(tmp_path,
                                                                           capsys, haystack):
    import json

    from rlm_ray.cli import main

    text = tmp_path / "log.txt"
    text.write_text(haystack)
    common = [QUESTION, "--text", str(text), "--local", "--max-iterations", "45",
              "--model", f"sim/explorer@{WINDOW}"]
    code = main(["query", *common, "--trajectory", str(tmp_path / "on.json")])
    out, err = capsys.readouterr()
    assert code == 0 and out.strip() == VALUE, err
    assert "is unknown" not in err     # the in-process simulator's window is known
    saved = json.loads((tmp_path / "on.json").read_text())
    assert saved["status"] == "ok" and saved["usage"]["compact_calls"] >= 3
    assert "compact " in err        # the summary line counts the compact calls

    code = main(["query", *common, "--root-window", "0",
                 "--trajectory", str(tmp_path / "off.json")])
    out, err = capsys.readouterr()
    assert code == 1 and "compaction is off" in err and "context_length_exceeded" in err


@pytest.mark.parametrize("argv, message", [
    (["query", "q?", "--text", "/etc/hostname", "--model", "sim", "--root-window", "-1"],
     "--root-window"),
    (["query", "q?", "--text", "/etc/hostname", "--model", "sim/explorer@lots"],
     "token count"),
    (["sim", "--model-window", "sim/explorer"], "MODEL=TOKENS"),
])
def test_bad_window_input_is_one_line_and_exit_2(argv, message, capsys):
    from rlm_ray.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlm-ray: error:") and message in err and "\n" not in err


def test_run_and_pipeline_pass_the_root_window_to_every_question(tmp_path):
    """`run --root-window` and a pipeline spec's `limits.root_window` reach RLM(...),
    and an in-process simulator's window reaches the gateway as a known window."""
    import argparse

    from rlm_ray.batch import commands as batch_commands
    from rlm_ray.batch.pipeline import PipelineSpec, rlm_from_spec

    parser = argparse.ArgumentParser()
    batch_commands.add_model_arguments(parser)
    args = parser.parse_args(["--model", f"sim/explorer@{WINDOW}", "--root-window", "0"])
    rlm, server = batch_commands.rlm_settings(args, str(tmp_path / "out"))
    try:
        assert rlm["root_window"] == 0 and RLM(**rlm).settings.root_window_tokens == 0
        assert rlm["gateway"].context_windows == {EXPLORER: WINDOW}
    finally:
        server.stop()
    spec = PipelineSpec(name="n", sources=["s"], corpus="c", output=str(tmp_path / "o"),
                        questions="q.jsonl", model=EXPLORER, api_base="http://127.0.0.1:9/v1",
                        limits={"root_window": 16_000})
    rlm, server, _ = rlm_from_spec(spec, str(tmp_path / "o" / "d"))
    assert server is None and RLM(**rlm).settings.root_window_tokens == 16_000


def test_rlm_policy_continues_its_plan_from_its_own_summary(sim):
    """At a 3k window the needle run is compacted after its first reply (nothing
    older is kept): `sim/rlm-policy` reads the step it reached from the summary it
    wrote, and finishes without redoing the search."""
    lines = [f"log line {i}: value {i * 7 % 1000:03d} " + "filler " * 8 for i in range(3000)]
    lines[2500] = "The secret code for ORCHID-7 is 4471-XQ."
    server = sim(model_windows={"sim/rlm-policy": 3000})
    rlm = RLM("openai/sim/rlm-policy", api_base=server.base_url, local=True,
              max_iterations=8, gateway=GatewayConfig(max_retries=0), root_window=3000)
    result = rlm.answer("\n".join(lines), "What is the secret code for ORCHID-7?")
    assert result.status == "ok" and result.answer == "4471-XQ"
    assert result.iterations == 2 and result.usage["compact_calls"] == 1
    summary = next(s for s in result.steps if s["code"].startswith("# context compacted"))
    assert "Steps of my plan completed: 1 to 1." in summary["output"]
