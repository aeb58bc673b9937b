"""What the root model is told. Written from the RLM paper's method (explore
first, chunk, query sub-models into variables, aggregate in code, answer with
FINAL), in our own words, plus the corpus API reference.

The format of the conversation (the question as written between `<question>`
and `</question>` lines, a `Context:` metadata block, `REPL output (iteration
K):` feedback, `Final answer required:` forced turn) is a contract with the
simulator's policies (docs/architecture.md); the wording around it is free.

Everything here is constant-size whatever the corpus size: metadata is
counts, a schema and at most MAX_EXAMPLE_PATHS paths, never corpus text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MAX_EXAMPLE_PATHS = 10
MAX_PATH_CHARS = 120

_CORPUS_API = """\
`context` is a handle on a corpus of documents (files of a codebase, or archived documents),
split into chunks and stored as tables. Nothing is loaded until you ask for it:
- context is also a read-only, lazy list of the documents' texts: len(context) = number of
  documents; context[i], context[-1] -> str; context[a:b] and `for doc in context:` fetch them in
  batches (path order, as context.docs()); context.path(i) -> its path. It is not a str: to
  search, use grep/sql/read below instead of reading everything.
- context.stats -> dict of counts (documents, chunks, tokens, characters, ...)
- context.docs(limit=None) -> list of {doc_id, path, n_lines, n_chunks, n_tokens, sha256}
- context.sql(query) -> list of row dicts. DuckDB SQL over two read-only views:
    chunks(doc_id, path, chunk_id, start_line, end_line, text, n_tokens, sha256)
    docs(doc_id, path, n_lines, n_chunks, n_tokens, sha256)
  Fast regex filter: regexp_matches(text, '(?i)pattern'). Results are capped at {max_rows} rows
  (a note tells you when); aggregate in SQL (count, group by) instead of fetching everything.
- context.grep(pattern, limit=100, regex=True, case=False) -> list of {doc_id, path, line, text}
  (line is the 1-based line number in the document)
- context.read(doc, start=0, end=None) -> str: lines [start, end) of a document (0-based), by
  doc_id or path"""

_STR_API = """\
`context` is a Python str holding the whole input. Slice it, split it, search it with `re`;
do not print it whole."""

_STR_EXPLORE = """\
Explore before answering: print len(context) and a short slice (context[:2000]), look at how
   it is laid out, search it for the terms of the question with `re`. Do not guess."""

_CORPUS_EXPLORE = """\
Explore before answering: look at context.stats, a few docs, the schema, grep for the terms
   of the question. Do not guess from the metadata."""

SYSTEM_PROMPT = """\
You answer a question about a context that is far too large to read directly. The context lives
in a Python REPL as the variable `context`; you see only its metadata. You work by writing Python
code in ```repl``` fenced blocks; the engine runs each block in a persistent sandboxed REPL
(variables survive between blocks and replies) and shows you a view of what each block printed
(about {view_chars} characters per block, {turn_view_chars} per reply), then the names of your
variables.

{context_api}

Other functions in the REPL:
- llm_query(prompt, model=None) -> str: ask a sub-model (context window about {sub_window} tokens;
  longer prompts are refused). It sees only the prompt you give it, so include the text it must
  read and say exactly what to return. model= picks one of: {allowed_models}.
- llm_query_batched(prompts, model=None) -> list[str]: many sub-model calls run concurrently,
  answers in order. A failed prompt yields a string starting with "Error:" in its slot.
- rlm_query(prompt, model=None, context=None) -> str: hand a sub-question to a child RLM with its
  own REPL, over the same context or over the str you pass as context=. Use it for sub-problems
  that need their own exploration. rlm_query_batched(prompts, model=None, contexts=None) runs
  several concurrently.
- SHOW_VARS() -> str: your variables with their type and size.
- print(...): the only way to see results.
The names context, llm_query, llm_query_batched, rlm_query, rlm_query_batched, FINAL, FINAL_VAR
and SHOW_VARS are reserved: if your code rebinds one, it is restored after the block. `answer`
starts as the answer dict (below); if you bind it to a value of your own before writing into
that dict, it is your variable from then on.

How to finish (only these forms finish; any other line, FINAL-like or not, is your prose):
- FINAL_VAR(name) on its own line (in a ```repl``` block or after it, quoted or not) finishes with
  the variable's value once the reply's code has run: compute, then FINAL_VAR in the same reply.
- FINAL(value) inside code finishes with that value. FINAL(answer text) on its own line outside
  code finishes a reply without code. Next to code you have not seen the code's output yet:
  such a FINAL is refused unless that output shows the same text (you are told why).
- Or set answer["content"] (starts as "") and answer["ready"] = True.
- Or, in a reply without code, end with the line FINAL ANSWER: <answer text>.
Lists and dicts become JSON, other values str(). The answer should be exactly what was asked
(a value, a list, a number), without commentary.

How to work:
1. {explore}
2. Narrow down with code to the parts that matter; compute exact answers in code whenever the
   question allows it (counting, listing, matching).
3. When meaning must be read, chunk the relevant text and send it to sub-models. Make each
   sub-prompt substantial (tens of thousands of characters, well under the sub-model window)
   and send them together with llm_query_batched. Never launch thousands of tiny calls: there
   is a budget of sub-calls, tokens and dollars, and a wall-time limit.
4. Keep sub-model answers in Python variables (lists, dicts) and aggregate them in code;
   print only short summaries.
5. Verify, then finish.
You have at most {max_iterations} replies. If code raises, you will see the error: fix it and
continue."""

FORCED_FINAL_PROMPT = """\
Final answer required: {reason}. Reply now with your best answer to the question, using what
you have found so far. Reply with FINAL(your answer) or FINAL_VAR(variable) only."""

# Placeholders a user's own system prompt (--system-prompt FILE) may use; any
# other brace text (code examples, f-strings) is left exactly as written.
PLACEHOLDERS = ("context_kind", "context_api", "explore", "sub_window", "view_chars",
                "turn_view_chars", "max_iterations", "max_rows", "allowed_models")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


@dataclass(frozen=True)
class PromptSettings:
    sub_window_tokens: int
    view_chars: int
    max_iterations: int
    max_rows: int
    turn_view_chars: int = 30_000
    allowed_models: tuple[str, ...] = ()


def system_prompt(context_kind: str, settings: PromptSettings, template: str | None = None) -> str:
    """The built-in prompt, or `template` (a user's own) with its placeholders filled."""
    corpus = context_kind == "corpus"
    values = {
        "context_kind": context_kind,
        "context_api": (_CORPUS_API if corpus else _STR_API).replace(
            "{max_rows}", str(settings.max_rows)),
        "explore": _CORPUS_EXPLORE if corpus else _STR_EXPLORE,
        "sub_window": str(settings.sub_window_tokens),
        "view_chars": str(settings.view_chars),
        "turn_view_chars": str(settings.turn_view_chars),
        "max_iterations": str(settings.max_iterations),
        "max_rows": str(settings.max_rows),
        "allowed_models": ", ".join(settings.allowed_models) or "the configured sub-model",
    }
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template or SYSTEM_PROMPT)


def corpus_metadata(stats: dict[str, Any], example_paths: list[str]) -> str:
    lines = ["kind: corpus"]
    if stats.get("scope"):
        lines.append(f"scope: {', '.join(stats['scope'])} (the counts below and everything "
                     "`context` shows are this scope's documents only)")
    for key in ("tokens", "documents", "chunks", "chunk_tokens"):
        if stats.get(key) is not None:
            lines.append(f"{key}: {stats[key]}")
    lines.append("schema: chunks(doc_id, path, chunk_id, start_line, end_line, text, n_tokens, "
                 "sha256); docs(doc_id, path, n_lines, n_chunks, n_tokens, sha256)")
    # One line per path, whatever the path holds: the metadata never ends the question.
    shown = [" ".join(p[:MAX_PATH_CHARS].splitlines())
             for p in example_paths[:MAX_EXAMPLE_PATHS]]
    if shown:
        lines.append(f"example paths ({len(shown)} of {stats.get('documents', '?')}):")
        lines.extend(f"  {p}" for p in shown)
    return "\n".join(lines)


def str_metadata(text: str, tokens: int, exact: bool = True) -> str:
    return "\n".join([
        "kind: str",
        f"tokens: {tokens}" if exact else f"tokens: about {tokens} (estimated from a sample)",
        f"characters: {len(text)}",
        f"lines: {text.count(chr(10)) + 1 if text else 0}",
    ])


QUESTION_OPEN, QUESTION_CLOSE = "<question>", "</question>"


def first_user_message(question: str, metadata: str) -> str:
    """The question exactly as written (its line breaks, tables and output formats are
    part of it) between tag lines, then the metadata. A reader takes the text up to the
    LAST `</question>` line: the question may quote the tag, the metadata never holds
    that line (paths in it are one indented line each)."""
    return f"{QUESTION_OPEN}\n{question}\n{QUESTION_CLOSE}\nContext:\n{metadata}"


def repl_feedback(iteration: int, output: str, error: str | None) -> str:
    text = f"REPL output (iteration {iteration}):\n{output}"
    if error:
        text += f"\nError:\n{error}"
    return text


def forced_final(reason: str) -> str:
    return FORCED_FINAL_PROMPT.format(reason=reason)
