"""The provider SIMULATOR over real loopback HTTP: litellm as the client (as
the gateway uses it), plus raw HTTP where headers matter."""
from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import litellm
import pytest
import tiktoken

from rlm_ray.engine.prompts import first_user_message
from rlm_ray.errors import UserError
from rlm_ray.sim import POLICIES, SimServer, fetch_stats, resolve_model

litellm.suppress_debug_info = True
ENC = tiktoken.get_encoding("cl100k_base")


def ask(server: SimServer, content: str = "hello", model: str = "sim/echo", **params):
    return litellm.completion(model=f"openai/{model}", api_base=server.base_url,
                              api_key=params.pop("api_key", "sim-key"), max_retries=0,
                              messages=[{"role": "user", "content": content}], **params)


def post(server: SimServer, body: dict | bytes, path: str = "/v1/chat/completions",
         api_key: str = "sim-key") -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of a raw POST; HTTP errors are answers too."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.load(err)


def chat(content: str, model: str = "sim/echo", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


# -- the OpenAI surface -------------------------------------------------------

def test_litellm_call_reports_real_token_usage(sim_server):
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Count the tokens of this sentence, please."}]
    reply = litellm.completion(model="openai/sim/echo", api_base=sim_server.base_url,
                               api_key="sim-key", messages=messages, max_retries=0)
    assert reply.choices[0].message.content == messages[-1]["content"]
    # OpenAI's chat formula: 3 per message + role + content, + 3 to prime the reply.
    expected_prompt = 3 + sum(3 + len(ENC.encode(m["role"])) + len(ENC.encode(m["content"]))
                              for m in messages)
    assert reply.usage.prompt_tokens == expected_prompt
    assert reply.usage.prompt_tokens == litellm.token_counter(model="gpt-4o", messages=messages)
    assert reply.usage.completion_tokens == len(ENC.encode(messages[-1]["content"]))
    assert reply.choices[0].finish_reason == "stop"


def test_response_shape_and_simulator_label(sim_server):
    status, headers, body = post(sim_server, chat("shape?"))
    assert status == 200 and headers["x-simulator"] == "rlm-ray"
    assert body["model"] == "sim/echo" and body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "shape?"}
    assert body["usage"]["total_tokens"] == (body["usage"]["prompt_tokens"]
                                             + body["usage"]["completion_tokens"])
    with urllib.request.urlopen(sim_server.base_url + "/models") as response:
        assert response.headers["x-simulator"] == "rlm-ray"
        listed = {m["id"] for m in json.load(response)["data"]}
    assert {"sim/echo", "sim/fixed", "sim/extract", "sim/count"} <= listed == set(POLICIES)


def test_streaming_gives_the_same_answer_and_usage(sim_server):
    chunks = list(ask(sim_server, "stream me please", stream=True,
                      stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "stream me please"
    assert chunks[-1].usage.completion_tokens == len(ENC.encode(text))


def test_max_tokens_truncates_with_finish_reason_length(sim_server):
    long_text = " ".join(f"word{i}" for i in range(200))
    reply = ask(sim_server, long_text, max_tokens=7)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 7
    assert long_text.startswith(reply.choices[0].message.content)


def test_unknown_model_is_404_listing_known_models(sim_server):
    status, _, body = post(sim_server, chat("x", model="sim/nope"))
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert "sim/echo" in body["error"]["message"]
    with pytest.raises(litellm.NotFoundError):
        ask(sim_server, model="sim/nope")


def test_bad_api_key_is_401(sim_server):
    status, _, body = post(sim_server, chat("x"), api_key="sim-bad-key")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    with pytest.raises(litellm.AuthenticationError):
        ask(sim_server, api_key="sim-bad-key")


def test_context_window_exceeded_is_400(sim):
    server = sim(context_window=50)
    status, _, body = post(server, chat("many words " * 40))
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    with pytest.raises(litellm.ContextWindowExceededError):
        ask(server, "many words " * 40)
    assert ask(server, "short").choices[0].message.content == "short"


def test_invalid_bodies_are_400_and_counted(sim):
    server = sim()
    assert post(server, b"{not json")[0] == 400
    assert post(server, b"[1, 2]")[0] == 400
    assert post(server, {"model": "sim/echo", "messages": []})[0] == 400
    assert post(server, chat("x", max_tokens=0))[0] == 400
    stats = server.stats()
    assert stats["requests"] == 4 and stats["by_status"] == {400: 4}
    assert stats["completions"] == 0 and stats["models"] == {"sim/echo": 2}


# -- built-in policies --------------------------------------------------------

def test_builtin_policies_are_deterministic_rules(sim_server):
    assert ask(sim_server, "anything", model="sim/fixed").choices[0].message.content == "ok"
    prompt = ("Question: which port does the cache server listen on?\n"
              "The web server listens on port 80.\n"
              "The cache server listens on port 6379.\n"
              "The cache is warm.")
    answers = {ask(sim_server, prompt, model="sim/extract").choices[0].message.content
               for _ in range(2)}
    assert answers == {"The cache server listens on port 6379."}
    assert ask(sim_server, "no question here", model="sim/extract").choices[0].message.content \
        == "NOT FOUND"
    text = "Count 'apple' in: apple pie, Apple, apples, apple. apple"
    assert ask(sim_server, text, model="sim/count").choices[0].message.content == "3"


# -- rate limits --------------------------------------------------------------

def test_rpm_limit_answers_429_with_retry_after(sim):
    server = sim(rpm=3, window_s=3.0)
    statuses = [post(server, chat(f"q{i}"))[0] for i in range(3)]
    status, headers, body = post(server, chat("one too many"))
    assert statuses == [200, 200, 200] and status == 429
    assert body["error"]["code"] == "rate_limit_exceeded"
    retry_ms = int(headers["retry-after-ms"])
    assert 0 < retry_ms <= 3000 and int(headers["retry-after"]) == math.ceil(retry_ms / 1000)
    with pytest.raises(litellm.RateLimitError):
        ask(server)
    time.sleep(retry_ms / 1000 + 0.05)  # honouring Retry-After is enough to get through
    assert post(server, chat("after the wait"))[0] == 200
    stats = server.stats()
    assert stats["by_status"] == {200: 4, 429: 2}
    assert stats["windows"]["max_requests"] == 3  # rejected calls cost no quota


def test_tpm_limit_counts_prompt_plus_max_tokens(sim):
    server = sim(tpm=100, window_s=30.0)
    prompt_tokens = ask(server, "tiny", max_tokens=1).usage.prompt_tokens
    charge = prompt_tokens + 30                      # what each call below reserves
    fits = (100 - (prompt_tokens + 1)) // charge
    statuses = [post(server, chat("tiny", max_tokens=30))[0] for _ in range(fits + 1)]
    assert statuses == [200] * fits + [429]
    assert server.stats()["windows"]["max_tokens"] <= 100
    status, headers, _ = post(server, chat("x" * 300, max_tokens=1))
    assert status == 429 and float(headers["retry-after-ms"]) > 0


def test_storm_forces_429_for_a_while(sim):
    server = sim()
    server.storm(seconds=30, retry_after_s=0.25)
    status, headers, _ = post(server, chat("x"))
    assert status == 429 and headers["retry-after-ms"] == "250" and headers["retry-after"] == "1"
    server.storm(seconds=0)
    assert post(server, chat("x"))[0] == 200
    status, _, _ = post(server, {"seconds": 30, "retry_after_s": 2}, path="/admin/storm")
    assert status == 200
    status, headers, _ = post(server, chat("x"))
    assert status == 429 and headers["retry-after"] == "2"


# -- injected faults ----------------------------------------------------------

FAULT_ERRORS = {
    "500": litellm.InternalServerError,
    "503": litellm.ServiceUnavailableError,
    "malformed": litellm.InternalServerError,     # litellm's mapping of an unparsable 200
    "truncated": litellm.InternalServerError,     # ... and of a short read ("Connection error")
    "hang": litellm.Timeout,
}


@pytest.mark.parametrize("kind", sorted(FAULT_ERRORS))
def test_each_fault_kind_makes_the_client_fail_once(sim, kind):
    server = sim(faults=(kind,), fail_first_n=1, hang_s=30)
    with pytest.raises(FAULT_ERRORS[kind]):
        ask(server, "first", timeout=1.0 if kind == "hang" else 30.0)
    assert ask(server, "second").choices[0].message.content == "second"
    stats = server.stats()
    assert stats["faults"] == {kind: 1} and stats["completions"] == 1
    assert stats["distinct_prompts"] == 1  # a faulted call delivered (and billed) nothing
    deadline = time.monotonic() + 5
    while server.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)  # a hung handler is cancelled once its client gives up
    assert server.stats()["in_flight"] == 0


def test_fault_rate_is_seeded_and_roughly_the_rate(sim):
    def statuses(seed: int) -> list[int]:
        server = sim(fail_rate=0.3, faults=("500", "503"), seed=seed)
        return [post(server, chat(f"q{i}"))[0] for i in range(100)]

    first, again, other = statuses(7), statuses(7), statuses(8)
    assert first == again and first != other
    assert 15 <= sum(s != 200 for s in first) <= 45
    assert set(first) == {200, 500, 503}


# -- stats --------------------------------------------------------------------

def test_stats_count_distinct_and_repeated_prompts(sim):
    server = sim()
    for content in ("a", "b", "c", "a", "b"):
        ask(server, content)
    ask(server, "a", model="sim/fixed")  # another model: another prompt
    stats = server.stats()
    assert stats["distinct_prompts"] == 4 and stats["repeated_prompts"] == 2
    assert stats["requests"] == stats["completions"] == 6
    assert stats["models"] == {"sim/echo": 5, "sim/fixed": 1}
    assert stats["prompt_tokens"] > 0 and stats["completion_tokens"] == 6
    assert fetch_stats(server.base_url) == {**stats, "in_flight": 0}
    server.reset_stats()
    assert server.stats()["requests"] == 0 and server.stats()["distinct_prompts"] == 0
    post(server, b"{}", path="/admin/reset")
    assert fetch_stats(server.url)["by_status"] == {}


@pytest.mark.timeout(60)
def test_concurrent_requests_overlap_under_latency(sim):
    import aiohttp

    latency_s, n = 1.0, 200  # long enough that all n connect before the first answers
    server = sim(latency_ms=latency_s * 1000, jitter=0.1, seed=3)

    async def burst() -> float:
        started = time.perf_counter()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            async def one(i: int) -> int:
                async with session.post(server.base_url + "/chat/completions",
                                        json=chat(f"q{i}")) as response:
                    await response.read()
                    return response.status
            assert set(await asyncio.gather(*(one(i) for i in range(n)))) == {200}
        return time.perf_counter() - started

    wall = asyncio.run(burst())
    stats = server.stats()
    assert stats["max_concurrency"] == n and stats["distinct_prompts"] == n
    assert wall / latency_s < n / 10  # overlapped, not one after another


def test_latency_model_is_seeded():
    a, b = SimServer(latency_ms=100, jitter=0.5, seed=1), SimServer(latency_ms=100, jitter=0.5, seed=1)
    draws = [a.simulator.latency_s(10) for _ in range(20)]
    assert draws == [b.simulator.latency_s(10) for _ in range(20)]
    assert all(0.05 <= d <= 0.15 for d in draws) and len(set(draws)) > 1
    c = SimServer(latency_ms=100, per_token_ms=10)
    assert c.simulator.latency_s(10) == pytest.approx(0.2)


# -- policy registry, configuration, resolve_model, CLI -----------------------

def test_policy_modules_load_optionally_but_never_hide_broken_imports(tmp_path, monkeypatch):
    from rlm_ray.sim import registry

    (tmp_path / "sim_policy_broken.py").write_text("import a_dependency_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    absent, broken = "sim_policy_absent", "sim_policy_broken"
    monkeypatch.setattr(registry, "_POLICY_MODULES", (absent,))
    monkeypatch.setattr(registry, "_OPTIONAL_POLICY_MODULES", frozenset({absent, broken}))
    assert registry.load_policies() is POLICIES          # an absent optional module is fine
    monkeypatch.setattr(registry, "_POLICY_MODULES", (broken,))
    with pytest.raises(ModuleNotFoundError, match="a_dependency_that_is_not_installed"):
        registry.load_policies()                          # its missing dependency is not
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_policy("sim/echo")(lambda messages: "impostor")



def test_bad_knobs_are_user_errors(sim_server):
    with pytest.raises(UserError, match="fault kind"):
        SimServer(faults=("boom",))
    with pytest.raises(UserError, match="fail-rate"):
        SimServer(fail_rate=1.5)
    with pytest.raises(UserError, match="cannot listen"):
        SimServer(port=sim_server.port).start()


def test_resolve_model(sim):
    assert resolve_model("openai/gpt-4o", None) == ("openai/gpt-4o", None, None)
    model, api_base, server = resolve_model("sim/echo", None)
    try:
        assert (model, api_base) == ("openai/sim/echo", server.base_url)
        reply = litellm.completion(model=model, api_base=api_base, api_key="k",
                                   messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "hi"
    finally:
        server.stop()
    assert resolve_model("sim/echo", "http://127.0.0.1:1/v1") == \
        ("openai/sim/echo", "http://127.0.0.1:1/v1", None)
    with pytest.raises(UserError, match="unknown simulator policy"):
        resolve_model("sim/nope", None)
    if "sim/rlm-policy" in POLICIES:
        model, _, server = resolve_model("sim", None)
        server.stop()
        assert model == "openai/sim/rlm-policy"
    else:
        with pytest.raises(UserError, match="sim/rlm-policy"):
            resolve_model("sim", None)


@contextlib.contextmanager
def sim_cli(*args: str):
    """`rlm-ray sim ARGS` as a process: yields it; the body must end it with
    SIGTERM and check its exit; a failing body gets it killed instead."""
    proc = subprocess.Popen([sys.executable, "-m", "rlm_ray.cli", "sim", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop_cleanly(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


@pytest.mark.timeout(60)
def test_cli_serves_until_sigterm():
    with sim_cli("--port", "0", "--rpm", "100") as proc:
        line = proc.stdout.readline()
        assert line.startswith("SIMULATOR listening on http://127.0.0.1:")
        assert line.rstrip().endswith("/v1 (not a real model provider)")
        assert "sim/echo" in proc.stdout.readline()
        base_url = line.split()[3]
        request = urllib.request.Request(base_url + "/chat/completions",
                                         data=json.dumps(chat("via cli")).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.load(response)["choices"][0]["message"]["content"] == "via cli"
        assert fetch_stats(base_url)["by_status"] == {200: 1}
        stop_cleanly(proc)
    assert "SIMULATOR stopped" in proc.stdout.read()


def test_cli_bad_option_is_one_line_error():
    result = subprocess.run([sys.executable, "-m", "rlm_ray.cli", "sim", "--fail-rate", "2"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("rlm-ray: error: --fail-rate must be between 0 and 1")
    assert "Traceback" not in result.stderr


# -- replay mode ----------------------------------------------------------------

SYSTEM = {"role": "system", "content": "any system prompt"}


def replay_file(tmp_path, recordings: list[dict]):
    path = tmp_path / "replay.json"
    path.write_text(json.dumps({"format": "rlm-ray-replay/1", "recordings": recordings}))
    return path


def root_messages(question: str, replies: list[str]) -> list[dict]:
    """A root conversation as the engine builds it: the question, then one
    assistant reply and one REPL-output message per turn."""
    messages = [SYSTEM, {"role": "user", "content": first_user_message(question, "kind: str")}]
    for i, reply in enumerate(replies, 1):
        messages += [{"role": "assistant", "content": reply},
                     {"role": "user", "content": f"REPL output (iteration {i}):\n..."}]
    return messages


def replay_body(messages: list[dict]) -> dict:
    return {"model": "sim/replay", "messages": messages}


def test_replay_serves_root_replies_in_order_keyed_by_question(sim, tmp_path):
    first = ["Let me look.\n```repl\nprint(context[:100])\n```", "FINAL_VAR(x)"]
    second = ["```repl\ny = 2\n```", "done\nFINAL(2)", "never reached"]
    server = sim(replay=replay_file(tmp_path, [
        {"question": "What is x?", "root_replies": first},
        {"question": "What is x? Answer twice.", "root_replies": second}]))
    for question, replies in (("What is x?", first), ("What is x? Answer twice.", second)):
        for turn, expected in enumerate(replies):
            status, _, body = post(server, replay_body(root_messages(question, replies[:turn])))
            assert status == 200
            assert body["choices"][0]["message"]["content"] == expected  # verbatim
    # the same turn asked twice (a retry, a resumed run) gets the same reply: stateless
    again = post(server, replay_body(root_messages("What is x?", first[:1])))[2]
    assert again["choices"][0]["message"]["content"] == first[1]


def test_replay_refuses_clearly_when_the_run_drifts(sim, tmp_path):
    server = sim(replay=replay_file(tmp_path, [{"question": "Q1", "root_replies": ["FINAL(1)"]}]))
    status, _, body = post(server, replay_body(root_messages("Q1", ["FINAL(1)"])))
    assert status == 400 and body["error"]["code"] == "replay_mismatch"
    assert "has 1 root replies" in body["error"]["message"]
    for other in ("Another question", "Q10", "Q1 and more"):   # whole questions only
        status, _, body = post(server, replay_body(root_messages(other, [])))
        assert status == 400 and f"no recording of the question {other!r}" in \
            body["error"]["message"]
    # a 400 is not retried by clients: the engine fails fast with this message
    with pytest.raises(litellm.BadRequestError, match="replay"):
        litellm.completion(model="openai/sim/replay", api_base=server.base_url, api_key="k",
                           max_retries=0, messages=root_messages("Q1", ["FINAL(1)"]))


def test_replay_answers_sub_calls_by_rule(sim, tmp_path):
    server = sim(replay=replay_file(tmp_path, [
        {"question": "Q1", "root_replies": ["FINAL(1)"],
         "sub_calls": [{"prompt": "exact prompt", "reply": "exact reply"}],
         "sub_rules": [{"prompt_contains": "magic", "reply": "rule reply"}],
         "sub_default": "default of Q1"},
        {"question": "Q2", "root_replies": ["FINAL(2)"], "sub_default": "default of Q2"}]))

    def sub(prompt: str) -> tuple[int, str]:
        status, _, body = post(server, replay_body([{"role": "user", "content": prompt}]))
        return status, (body["choices"][0]["message"]["content"] if status == 200
                        else body["error"]["message"])

    assert sub("exact prompt") == (200, "exact reply")
    assert sub("find the magic number in: ...") == (200, "rule reply")
    assert sub("about Q2: summarise") == (200, "default of Q2")   # names its question
    status, message = sub("unrelated prompt")                      # two recordings: no guess
    assert status == 400 and "no recorded sub-call reply matches" in message


def test_replay_model_exists_only_on_a_replay_server(sim, sim_server, tmp_path):
    status, _, body = post(sim_server, replay_body(root_messages("Q1", [])))
    assert status == 404 and "--replay FILE" in body["error"]["message"]
    server = sim(replay=replay_file(tmp_path, [{"question": "Q1", "root_replies": ["FINAL(1)"]}]))
    with urllib.request.urlopen(server.base_url + "/models") as response:
        listed = {m["id"] for m in json.load(response)["data"]}
    assert listed == set(POLICIES) | {"sim/replay"}


def test_bad_replay_files_are_user_errors(tmp_path):
    bad = tmp_path / "bad.json"
    for content, message in (("{not json", "not valid JSON"),
                             ('{"recordings": []}', "rlm-ray-replay/1"),
                             ('{"format": "rlm-ray-replay/1", "recordings": [{"question": "q"}]}',
                              "root_replies"),
                             ('{"format": "rlm-ray-replay/1", "recordings": ['
                              '{"question": "q", "root_replies": ["a"]},'
                              '{"question": "q", "root_replies": ["b"]}]}', "two recordings")):
        bad.write_text(content)
        with pytest.raises(UserError, match=message):
            SimServer(replay=bad)
    with pytest.raises(UserError, match="cannot read replay file"):
        SimServer(replay=tmp_path / "missing.json")


def test_resolve_replay_model(tmp_path):
    path = replay_file(tmp_path, [{"question": "Q1", "root_replies": ["FINAL(1)"]}])
    model, api_base, server = resolve_model(f"sim/replay:{path}", None)
    try:
        assert model == "openai/sim/replay" and api_base == server.base_url
        reply = litellm.completion(model=model, api_base=api_base, api_key="k", max_retries=0,
                                   messages=root_messages("Q1", []))
        assert reply.choices[0].message.content == "FINAL(1)"
    finally:
        server.stop()
    # with --api-base the remote simulator (started with --replay) serves it
    assert resolve_model(f"sim/replay:{path}", "http://127.0.0.1:1/v1") == \
        ("openai/sim/replay", "http://127.0.0.1:1/v1", None)
    with pytest.raises(UserError, match="sim/replay:FILE"):
        resolve_model("sim/replay", None)
    with pytest.raises(UserError, match="cannot read replay file"):
        resolve_model(f"sim/replay:{tmp_path / 'missing.json'}", None)


@pytest.mark.timeout(60)
def test_cli_serves_a_replay_file(tmp_path):
    path = replay_file(tmp_path, [{"question": "Q1", "root_replies": ["FINAL(1)"]}])
    with sim_cli("--replay", str(path)) as proc:
        base_url = proc.stdout.readline().split()[3]
        assert "sim/replay" in proc.stdout.readline()
        assert "replaying 1 recorded conversation(s)" in proc.stdout.readline()
        reply = litellm.completion(model="openai/sim/replay", api_base=base_url, api_key="k",
                                   max_retries=0, messages=root_messages("Q1", []))
        assert reply.choices[0].message.content == "FINAL(1)"
        stop_cleanly(proc)
    result = subprocess.run([sys.executable, "-m", "rlm_ray.cli", "sim", "--replay",
                             str(tmp_path / "missing.json")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("rlm-ray: error: cannot read replay file")
