"""CLI: `rlm-ray query` (one question through the engine)."""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack

from rlm_ray.llm.options import add_cost_arguments

DEFAULT_TRAJECTORY_DIR = ".rlm-ray/trajectories"


def add_model_args(parser: argparse.ArgumentParser, *, model_required: bool = True) -> None:
    parser.add_argument("--model", required=model_required, metavar="M",
                        help="root model (a litellm model string; `sim` starts the SIMULATOR)")
    parser.add_argument("--sub-model", default=None, metavar="M2",
                        help="model for llm_query sub-calls (default: the root model)")
    parser.add_argument("--api-base", default=None, metavar="URL",
                        help="OpenAI-compatible endpoint for the models")
    add_dialect_args(parser)


def add_dialect_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by `query` and `run`: the root's system prompt and `model=`."""
    parser.add_argument("--system-prompt", default=None, metavar="FILE",
                        help="your own system prompt for the root model instead of the "
                             "built-in one; placeholders such as {context_api}, "
                             "{max_iterations}, {view_chars} are filled in (see README)")
    parser.add_argument("--allow-model", action="append", default=[], metavar="M",
                        help="a model that llm_query(..., model=M) and rlm_query may pick "
                             "(repeatable; the sub-model is always allowed)")
    parser.add_argument("--output-schema", default=None, metavar="FILE",
                        help="a JSON Schema the answer must fit (typed answers): the model is "
                             "shown it, its answer is checked, a misfit costs it a reply")


def add_window_args(parser: argparse.ArgumentParser) -> None:
    """--root-window, shared by `query` and `run`: the root model's input window."""
    parser.add_argument("--root-window", type=int, default=None, metavar="TOKENS",
                        help="the root model's input window in tokens: the conversation is "
                             "compacted (older turns summarised by the root model, the full "
                             "history kept in the REPL as `history`) past 85%% of it. Default: "
                             "litellm's table for the model (unknown model: no compaction "
                             "before calls); 0 turns compaction off")


def check_root_window(root_window: int | None) -> None:
    from rlm_ray.errors import UserError

    if root_window is not None and root_window < 0:
        raise UserError(f"--root-window must be >= 0 (0 turns compaction off), got {root_window}")


def window_note(model: str, root_window: int | None, gateway) -> str | None:
    """One line for stderr when compaction cannot work from a known window."""
    from rlm_ray.llm.cost import context_window

    if root_window == 0:
        return ("rlm-ray: compaction is off (--root-window 0): a conversation longer than "
                "the root model's window ends the question with status error")
    if root_window is None and context_window(model, gateway) is None:
        return (f"rlm-ray: the input window of {model} is unknown (not in litellm's table): "
                "no compaction before root calls; give --root-window TOKENS to enable it "
                "(a context_length_exceeded still compacts and retries once)")
    return None


def read_system_prompt(path: str | None) -> str | None:
    """The text of --system-prompt FILE (None without the flag); a UserError if unusable."""
    from rlm_ray.errors import UserError

    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise UserError(f"cannot read --system-prompt {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"--system-prompt {path} is not UTF-8 text") from None
    if not text.strip():
        raise UserError(f"--system-prompt {path} is empty")
    return text


def read_output_schema(path: str | None):
    """--output-schema FILE, checked (None without the flag); a UserError if unusable."""
    from rlm_ray.engine.output_schema import load

    return None if path is None else load(path)


def add_limit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-depth", type=int, default=1, metavar="D",
                        help="recursion depth: 1 = sub-calls only, 2 = child RLMs too (default 1)")
    parser.add_argument("--max-iterations", type=int, default=20, metavar="N",
                        help="root replies per RLM (default 20)")
    parser.add_argument("--max-sub-calls", type=int, default=None, metavar="N",
                        help="sub-calls across the whole tree (default unlimited)")
    parser.add_argument("--budget-usd", type=float, default=None, metavar="X")
    parser.add_argument("--budget-tokens", type=int, default=None, metavar="N")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="wall-time limit for the whole tree, seconds")


def register(commands, bench) -> None:
    query = commands.add_parser(
        "query", help="answer one question over a corpus with an RLM",
        usage="rlm-ray query CORPUS QUESTION --model M [options]\n"
              "       rlm-ray query --text FILE QUESTION --model M [options]",
        description="Answer QUESTION over CORPUS (a corpus URI: local path or s3://) or over "
                    "a plain-text file given with --text. The answer goes to stdout, a "
                    "one-line summary to stderr, the trajectory (calls and steps) to a JSON "
                    "file. Exit status: 1 when the run ended with status error, 2 on bad "
                    "input, 0 otherwise (ok, or a limit reached: budget_exceeded / timeout / "
                    "max_iterations, with the best partial answer).")
    query.add_argument("inputs", nargs="+", metavar="ARG",
                       help="CORPUS and QUESTION (just QUESTION with --text)")
    query.add_argument("--text", default=None, metavar="FILE",
                       help="use the content of FILE as a plain string context")
    add_model_args(query)
    add_limit_args(query)
    add_window_args(query)
    add_cost_arguments(query)
    query.add_argument("--trajectory", default=None, metavar="FILE",
                       help="where to write the trajectory JSON "
                            f"(default {DEFAULT_TRAJECTORY_DIR}/ID.json)")
    query.add_argument("--local", action="store_true",
                       help="run the root loop in this process instead of a Ray actor")
    query.set_defaults(func=_query)


def resolve_models(args, stack: ExitStack) -> tuple[str, str, str | None, dict | None]:
    """(root model, sub model, api_base, windows); `sim` models start an in-process
    SIMULATOR, whose windows are known as litellm's table knows a real model's."""
    from rlm_ray.llm.options import entry_for
    from rlm_ray.sim import resolve_model
    from rlm_ray.sim.server import served_windows

    model, api_base, server = resolve_model(args.model, args.api_base,
                                            entry_for(getattr(args, "price_like", None), args.model))
    if server is not None:
        stack.callback(server.stop)
        print(f"rlm-ray: the SIMULATOR is answering ({server.base_url}); it is not a real model",
              file=sys.stderr)
    sub_model = model
    if args.sub_model:
        sub_model, _, sub_server = resolve_model(args.sub_model, api_base)
        if sub_server is not None:
            stack.callback(sub_server.stop)
    return model, sub_model, api_base, served_windows(server, model)


def allowed_models(names: list[str], api_base: str | None) -> list[str]:
    """--allow-model names as litellm model strings (`sim/...` resolved like --sub-model)."""
    from rlm_ray.sim import resolve_model

    return [resolve_model(name, api_base or "unused")[0] for name in names]


def open_input(args) -> tuple[object, str]:
    from rlm_ray.errors import UserError

    if args.text:
        if len(args.inputs) != 1:
            raise UserError("with --text FILE give only the QUESTION")
        try:
            with open(args.text, encoding="utf-8", errors="replace") as f:
                return f.read(), args.inputs[0]
        except OSError as exc:
            raise UserError(f"cannot read --text {args.text}: {exc.strerror}") from None
    if len(args.inputs) != 2:
        raise UserError("give CORPUS and QUESTION (or --text FILE and QUESTION)")
    from rlm_ray.corpus import Corpus

    return Corpus.open(args.inputs[0]), args.inputs[1]


def write_trajectory(path: str, question: str, query_id: str, result) -> None:
    from dataclasses import asdict

    from rlm_ray import storage

    payload = {"query_id": query_id, "question": question, **asdict(result)}
    storage.write_bytes_atomic(path, json.dumps(payload, indent=1, default=str).encode())


def _query(args) -> int:
    import uuid

    from rlm_ray.engine import RLM, Limits
    from rlm_ray.textsafe import terminal_safe
    from rlm_ray.llm.config import GatewayConfig
    from rlm_ray.llm.options import cost_fields

    # Bad limits are user errors: report them before anything starts.
    Limits(max_depth=args.max_depth, max_iterations=args.max_iterations,
           max_sub_calls=args.max_sub_calls, budget_usd=args.budget_usd,
           budget_tokens=args.budget_tokens, timeout_s=args.timeout)
    check_root_window(args.root_window)
    system_prompt = read_system_prompt(args.system_prompt)
    schema = read_output_schema(args.output_schema)
    context, question = open_input(args)
    with ExitStack() as stack:
        model, sub_model, api_base, windows = resolve_models(args, stack)
        gateway = GatewayConfig(**cost_fields(args, model), context_windows=windows)
        note = window_note(model, args.root_window, gateway)
        rlm = RLM(model, sub_model, api_base=api_base, max_depth=args.max_depth,
                  max_iterations=args.max_iterations, max_sub_calls=args.max_sub_calls,
                  budget_usd=args.budget_usd, budget_tokens=args.budget_tokens,
                  timeout_s=args.timeout, local=args.local, system_prompt=system_prompt,
                  allowed_models=allowed_models(args.allow_model, api_base),
                  gateway=gateway, root_window=args.root_window, output_schema=schema)
        query_id = uuid.uuid4().hex[:12]
        result = rlm.answer(context, question, query_id=query_id)
    path = args.trajectory or f"{DEFAULT_TRAJECTORY_DIR}/{query_id}.json"
    write_trajectory(path, question, query_id, result)
    # The terminal gets inert text; the trajectory file keeps the exact answer.
    shown = result.answer if result.answer is not None else ""
    if result.output is not None:   # a typed answer: the value that fit, as JSON
        shown = json.dumps(result.output, ensure_ascii=False)
    print(terminal_safe(shown))
    if note:   # after the run: bad input stays a one-line error
        print(note, file=sys.stderr)
    error = f" error={result.error!r}" if result.error else ""
    print(terminal_safe(f"rlm-ray: {result.summary()}{error} trajectory={path}"), file=sys.stderr)
    return 1 if result.status == "error" else 0

