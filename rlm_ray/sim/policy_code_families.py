"""Codebase families (define, params, suffix, subclass, delegate): the plan a
careful model follows over a corpus of source files.

1. explore: SQL (`regexp_matches` over chunks) narrows to candidate modules,
   a superset of the truth; on error, the same through `context.grep`.
2. map: read each candidate, cut it at def/class boundaries into ~40k-char
   sub-prompts and ask sub-models (`llm_query_batched`) what each part defines.
3. verify and answer: the modules the sub-models flagged are checked with
   `ast` in the REPL (their regex reading can be fooled by strings and
   docstrings), aggregated, and answered with FINAL.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rlm_ray.sim.policy_core import PREVIEW, SO_FAR, Code, Step, register_family
from rlm_ray.sim.policy_repl_lib import prelude


@dataclass(frozen=True)
class CodeTask:
    sql: str           # RE2 over chunk text (inside a SQL literal: no single quotes)
    grep: str          # the same, line by line, for context.grep
    instruction: str   # first line of every sub-prompt (a rule of policy_sub)
    keep: str          # Python expression over `names` (one module's sub-answer)
    verify: str        # Python code: from `flagged` and `texts`, set `result` (a str)
    empty: str         # the answer when no module is a candidate
    raw: str           # Python expression: the sub-models' own (unverified) answer
    path: str | None = None


TaskBuilder = Callable[[Step], CodeTask]


def _explore(build: TaskBuilder) -> Callable[[Step], Code]:
    def stage(step: Step) -> Code:
        task = build(step)
        if step.attempt == 0:
            find = f"cands = candidate_paths({task.sql!r}, {task.path!r})"
            plan = "First I narrow the corpus to candidate modules with a regex in SQL."
        else:
            find = f"cands = candidate_paths_grep({task.grep!r}, {task.path!r})"
            plan = "The SQL step failed; I find the candidates with context.grep instead."
        code = f"{prelude()}\n{find}\nprint(f'candidates={{len(cands)}}', cands[:10])"
        return Code("Let me see what the context holds first. " + plan, code, preview=PREVIEW)
    return stage


def _map(build: TaskBuilder) -> Callable[[Step], Code]:
    def stage(step: Step) -> Code:
        task = build(step)
        if "candidates=0 " in step.conv.last_output():
            return Code("No module can match, so the answer is empty.",
                        final_value=task.empty)
        limit = 40000 if step.attempt == 0 else 15000
        code = (
            "texts = {p: context.read(p) for p in cands}\n"
            f"sections = [s for p in cands for s in code_sections(p, texts[p], {limit})]\n"
            f"prompts = pack_prompts({task.instruction!r}, sections, limit={limit})\n"
            "replies = map_prompts(prompts)\n"
            "listing = parse_listing(replies)\n"
            f"flagged = sorted(p for p, names in listing.items() if p in texts and ({task.keep}))\n"
            f"answer['content'] = str({task.raw})  # unverified, in case the budget runs out\n"
            "print(len(prompts), 'sub-calls;', len(flagged), 'modules flagged:', flagged[:10])"
        )
        look = ("# what the sub-models answered for a few modules\n"
                "for path, answer in list(listing.items())[:3]:\n"
                "    print(path, '->', answer[:5])")
        return Code("Now I ask sub-models to read every candidate module, in batches.", code,
                    look=look, after="Next I verify the flagged modules myself.")
    return stage


def _verify(build: TaskBuilder) -> Callable[[Step], Code]:
    def stage(step: Step) -> Code:
        task = build(step)
        code = (f"{task.verify}\nanswer['content'] = result\n"
                f"print('sub-models said:', str({task.raw})[:200], '| ast says:', result[:200])\n"
                f"print({SO_FAR!r}, result)")
        return Code("The sub-models read regexes; I confirm their modules with ast.", code,
                    after="`result` holds the answer checked against the syntax trees.",
                    final="result")
    return stage


def code_stages(build: TaskBuilder) -> tuple:
    return _explore(build), _map(build), _verify(build)


def _define(step: Step) -> CodeTask:
    kind, name = step.match.group(1).lower(), step.match.group(2)
    head = r"(async\s+)?def" if kind == "function" else "class"
    return CodeTask(
        sql=rf"(?m)^\s*{head}\s+{name}\b", grep=rf"^\s*{head}\s+{name}\b",
        instruction=f"List the {kind} names defined in this code:",
        keep=f"{name!r} in names",
        verify=(f"result = ', '.join(sorted(p for p in flagged if {name!r} in "
                f"defined_names(parse_tree(texts[p]), {kind!r}))) or 'none'"),
        empty="none", raw="', '.join(flagged)")


def _params(step: Step) -> CodeTask:
    param = step.match.group(1)
    path = step.match.group(2) if step.match.re.groups > 1 else None
    return CodeTask(
        sql=rf"\b{param}\b", grep=rf"\b{param}\b",
        instruction=f"List functions with a parameter named {param} in this code:",
        keep="names",
        verify=(f"result = str(sum(count_param_functions(parse_tree(texts[p]), {param!r}) "
                "for p in flagged))"),
        empty="0", raw="sum(len(listing[p]) for p in flagged)", path=path)


def _suffix(step: Step) -> CodeTask:
    suffix = step.match.group(1)
    return CodeTask(
        sql=rf"(?m)^\s*class\s+\w*{suffix}\b", grep=rf"^\s*class\s+\w*{suffix}\b",
        instruction="List the class names defined in this code:",
        keep=f"any(n.endswith({suffix!r}) for n in names)",
        verify=(f"result = str(sum(any(n.endswith({suffix!r}) for n in "
                "defined_names(parse_tree(texts[p]), 'class')) for p in flagged))"),
        empty="0", raw="len(flagged)")


def _subclass(step: Step) -> CodeTask:
    base = step.match.group(1)
    # Bases may span lines (`class X(\n    Base):`); RE2's [^)] crosses newlines.
    return CodeTask(
        sql=rf"(?m)^\s*class\s+\w+\s*\([^)]*\b{base}\b", grep=r"\b" + base + r"\b",
        instruction=f"List the classes that inherit from {base} in this code:",
        keep="names",
        verify=("result = ', '.join(sorted(set().union(*(subclasses_of(parse_tree(texts[p]), "
                f"{base!r}) for p in flagged)))) or 'none'"),
        empty="none", raw="', '.join(sorted({n for p in flagged for n in listing[p]}))")


_NAME = r"([A-Za-z_]\w*)"
register_family("define", rf"Which module defines the (function|class) {_NAME}\?",
                *code_stages(_define))
register_family("params-in-path",
                rf"How many functions take a parameter named {_NAME} in (\S+?)\?",
                *code_stages(_params))
register_family("params", rf"How many functions take a parameter named {_NAME}\?",
                *code_stages(_params))
register_family("suffix", r"How many modules define a class whose name ends in '(\w+)'\?",
                *code_stages(_suffix))
register_family("subclass", rf"Which classes inherit from {_NAME}\?", *code_stages(_subclass))


def _delegate_children(step: Step) -> Code:
    paths = [p.strip() for p in step.match.group(1).split(",") if p.strip()]
    param = step.match.group(2)
    # A child that failed (or was answered by a plain sub-model at max depth)
    # does not return an integer: count that path here instead. After an
    # error (e.g. a path that is not in the corpus) such a path counts 0.
    read = "context.read(p)" if step.attempt == 0 else "read_or_empty(p)"
    code = "\n".join([
        prelude(),
        "def read_or_empty(p):",
        "    try:",
        "        return context.read(p)",
        "    except Exception:",
        "        return ''",
        f"paths = {paths!r}",
        f"questions = [f'How many functions take a parameter named {param} in {{p}}?' "
        "for p in paths]",
        "replies = rlm_query_batched(questions)",
        "counts = {p: (int(r) if str(r).strip().isdigit() else None) "
        "for p, r in zip(paths, replies)}",
        "print('child answers:', counts)",
        "for p in [p for p, n in counts.items() if n is None]:",
        f"    counts[p] = count_param_functions(parse_tree({read}), {param!r})",
        "result = ', '.join(f'{p}={counts[p]}' for p in paths)",
        "answer['content'] = result",
        f"print({SO_FAR!r}, result)",
    ])
    return Code("Let me look at the context; then each path is its own sub-problem, so I "
                "hand one to a child RLM each.", code, preview=PREVIEW,
                after="The counts per path are in `result`.")


def _delegate_final(step: Step) -> Code:
    return Code("The children answered and I filled in the paths they could not count, "
                "so `result` is complete.", final="result")


register_family("delegate",
                rf"For each of the paths (.+?): how many functions take a parameter named "
                rf"{_NAME}\?", _delegate_children, _delegate_final)
