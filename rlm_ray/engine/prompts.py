"""What the root model is told. Written from the RLM paper's method (explore
first, chunk, query sub-models into variables, aggregate in code, answer with
FINAL), in our own words, plus the corpus API reference.

The format of the conversation (first line `Question: ...`, a `Context:`
metadata block, `REPL output (iteration K):` feedback, `Final answer
required:` forced turn) is a contract with the simulator's policies
(docs/architecture.md); the wording around it is free.

Everything here is constant-size whatever the corpus size: metadata is
counts, a schema and at most MAX_EXAMPLE_PATHS paths, never corpus text.
"""
from __future__ import annotations

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

SYSTEM_PROMPT = """\
You answer a question about a context that is far too large to read directly. The context lives
in a Python REPL as the variable `context`; you see only its metadata. You work by writing Python
code in ```repl``` fenced blocks; the engine runs each block in a persistent sandboxed REPL
(variables survive between blocks) and shows you a truncated view of what it printed.

{context_api}

Other functions in the REPL:
- llm_query(prompt) -> str: ask a sub-model (context window about {sub_window} tokens; longer
  prompts are refused). It sees only the prompt you give it, so include the text it must read
  and say exactly what to return.
- llm_query_batched(prompts) -> list[str]: many sub-model calls run concurrently, answers in
  order. A failed prompt yields a string starting with "Error:" in its slot.
- rlm_query(prompt, context=None) -> str: hand a sub-question to a child RLM with its own REPL,
  over the same context or over the string you pass. Use it for sub-problems that need their
  own exploration. rlm_query_batched(prompts, contexts=None) runs several concurrently.
- FINAL(value): finish with this answer. FINAL_VAR("name"): finish with the variable `name`.
  You may instead set answer["content"] = ... and answer["ready"] = True.
- print(...): the only way to see results; output is truncated to about {view_chars} characters.

How to work:
1. Explore before answering: look at context.stats, a few docs, the schema, grep for the terms
   of the question. Do not guess from the metadata.
2. Narrow down with code (SQL, grep, regex) to the parts that matter; compute exact answers in
   code whenever the question allows it (counting, listing, matching).
3. When meaning must be read, chunk the relevant text and send it to sub-models. Make each
   sub-prompt substantial (tens of thousands of characters, well under the sub-model window)
   and send them together with llm_query_batched. Never launch thousands of tiny calls: there
   is a budget of sub-calls, tokens and dollars, and a wall-time limit.
4. Keep sub-model answers in Python variables (lists, dicts) and aggregate them in code;
   print only short summaries.
5. Verify, then answer with FINAL(...) or FINAL_VAR(...) in a ```repl``` block. The answer should
   be exactly what was asked (a value, a list, a number), without commentary.
You have at most {max_iterations} replies. If code raises, you will see the error: fix it and
continue."""

FORCED_FINAL_PROMPT = """\
Final answer required: {reason}. Reply now with your best answer to the question, using what
you have found so far. Reply with FINAL(your answer) only, no code."""


@dataclass(frozen=True)
class PromptSettings:
    sub_window_tokens: int
    view_chars: int
    max_iterations: int
    max_rows: int


def system_prompt(context_kind: str, settings: PromptSettings) -> str:
    api = (_CORPUS_API if context_kind == "corpus" else _STR_API).replace(
        "{max_rows}", str(settings.max_rows))
    return SYSTEM_PROMPT.format(
        context_api=api, sub_window=settings.sub_window_tokens,
        view_chars=settings.view_chars, max_iterations=settings.max_iterations)


def corpus_metadata(stats: dict[str, Any], example_paths: list[str]) -> str:
    lines = ["kind: corpus"]
    for key in ("tokens", "documents", "chunks", "chunk_tokens"):
        if stats.get(key) is not None:
            lines.append(f"{key}: {stats[key]}")
    lines.append("schema: chunks(doc_id, path, chunk_id, start_line, end_line, text, n_tokens, "
                 "sha256); docs(doc_id, path, n_lines, n_chunks, n_tokens, sha256)")
    shown = [p[:MAX_PATH_CHARS] for p in example_paths[:MAX_EXAMPLE_PATHS]]
    if shown:
        lines.append(f"example paths ({len(shown)} of {stats.get('documents', '?')}):")
        lines.extend(f"  {p}" for p in shown)
    return "\n".join(lines)


def str_metadata(text: str, tokens: int) -> str:
    return "\n".join([
        "kind: str",
        f"tokens: {tokens}",
        f"characters: {len(text)}",
        f"lines: {text.count(chr(10)) + 1 if text else 0}",
    ])


def first_user_message(question: str, metadata: str) -> str:
    # The question is a single line by contract: the policies read the first line.
    question = " ".join(question.split())
    return f"Question: {question}\nContext:\n{metadata}"


def repl_feedback(iteration: int, output: str, error: str | None) -> str:
    text = f"REPL output (iteration {iteration}):\n{output}"
    if error:
        text += f"\nError:\n{error}"
    return text


def forced_final(reason: str) -> str:
    return FORCED_FINAL_PROMPT.format(reason=reason)
