"""Code QA over the CPython standard library, with exact answers from `ast`.

A size picks whole stdlib files in a seeded order until the token budget is
used (the whole stdlib for the largest sizes). Truth is an `ast` walk of the
picked files; files that do not parse count for nothing (as the families table
says). Targets (names, parameters, suffixes, bases) are *chosen* so that a
plain-text reading agrees with the `ast` one (no `def NAME` inside strings of
other files, no dotted bases): the question is hard because of the corpus
size, not because of a parsing corner case.
"""
from __future__ import annotations

import ast
import functools
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from rlm_ray.bench.stdlib_text import SourceFile, stdlib_files
from rlm_ray.bench.suites.base import Case, Question

SIZES = tuple(2 ** k for k in (16, 18, 20, 22, 23))
_FUNC = (ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass
class ModuleFacts:
    path: str
    parsed: bool
    functions: list[tuple[str, frozenset[str], bool]] = field(default_factory=list)  # name, params, top-level
    classes: list[tuple[str, tuple[str, ...], bool]] = field(default_factory=list)   # name, base names, all plain names


def _params(node: ast.FunctionDef | ast.AsyncFunctionDef) -> frozenset[str]:
    a = node.args
    names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    return frozenset(names)


def _base_name(expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute):
        return expr.attr
    return None


@functools.cache
def facts_of(source: SourceFile) -> ModuleFacts:
    try:
        tree = ast.parse(source.text)
    except (SyntaxError, ValueError):
        return ModuleFacts(source.relpath, parsed=False)
    facts = ModuleFacts(source.relpath, parsed=True)
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, _FUNC):
            facts.functions.append((node.name, _params(node), id(node) in top))
        elif isinstance(node, ast.ClassDef):
            bases = tuple(b for b in map(_base_name, node.bases) if b)
            plain = all(isinstance(b, ast.Name) for b in node.bases)
            facts.classes.append((node.name, bases, plain))
    return facts


# ---- truth: one function per family, over a list of ModuleFacts ----------

def define_truth(facts: list[ModuleFacts], name: str, kind: str) -> str:
    hits = set()
    for m in facts:
        names = [f[0] for f in m.functions] if kind == "function" else [c[0] for c in m.classes]
        if name in names:
            hits.add(m.path)
    return ", ".join(sorted(hits))


def params_truth(facts: list[ModuleFacts], param: str) -> int:
    return sum(param in params for m in facts for _, params, _ in m.functions)


def suffix_truth(facts: list[ModuleFacts], suffix: str) -> int:
    return sum(any(c[0].endswith(suffix) for c in m.classes) for m in facts)


def subclass_truth(facts: list[ModuleFacts], base: str) -> str:
    return ", ".join(sorted({c[0] for m in facts for c in m.classes if base in c[1]}))


def delegate_truth(facts: list[ModuleFacts], paths: list[str], param: str) -> str:
    by_path = {m.path: m for m in facts}
    return ", ".join(f"{p}={params_truth([by_path[p]], param)}" for p in paths)


# ---- the questions, exactly as in the families table -----------------------

QUESTIONS = {
    "define_function": "Which module defines the function {}?",
    "define_class": "Which module defines the class {}?",
    "params": "How many functions take a parameter named {}?",
    "suffix": "How many modules define a class whose name ends in '{}'?",
    "subclass": "Which classes inherit from {}?",
}


def delegate_question(paths: list[str], param: str) -> str:
    return f"For each of the paths {', '.join(paths)}: how many functions take a parameter named {param}?"


# ---- choosing unambiguous targets ----------------------------------------

def _select_files(rng: random.Random, size: int) -> list[SourceFile]:
    files = [f for f in stdlib_files() if f.tokens > 0]
    if size >= sum(f.tokens for f in files):
        return files
    rng.shuffle(files)
    chosen, total = [], 0
    for f in files:
        if total + f.tokens <= size:
            chosen.append(f)
            total += f.tokens
    return sorted(chosen, key=lambda f: f.relpath)


def _text_defines(sources: list[SourceFile], keyword: str, name: str) -> set[str]:
    pattern = re.compile(rf"^[ \t]*(?:async[ \t]+)?{keyword}[ \t]+{re.escape(name)}\b", re.M)
    return {s.relpath for s in sources if pattern.search(s.text)}


def _define_targets(rng, sources, facts, kind: str, k: int) -> list[str]:
    keyword = "def" if kind == "function" else "class"
    where: dict[str, set[str]] = defaultdict(set)
    nested: set[str] = set()
    for m in facts:
        entries = [(f[0], f[2]) for f in m.functions] if kind == "function" else \
                  [(c[0], True) for c in m.classes]
        for name, top in entries:
            where[name].add(m.path)
            if not top:
                nested.add(name)
    candidates = sorted(n for n, paths in where.items()
                        if len(n) >= 8 and not n.startswith("_") and n not in nested and len(paths) <= 2)
    rng.shuffle(candidates)
    picked = []
    for name in candidates:
        if _text_defines(sources, keyword, name) == where[name]:
            picked.append(name)
        if len(picked) == k:
            break
    return picked


def _params_targets(rng, facts, k: int) -> list[str]:
    counts = Counter(p for m in facts for _, params, _ in m.functions for p in params)
    candidates = sorted(p for p, n in counts.items() if 2 <= n <= 400 and len(p) >= 4 and not p.startswith("_"))
    return rng.sample(candidates, min(k, len(candidates)))


def _suffix_targets(rng, facts, k: int) -> list[str]:
    last_word = re.compile(r"[A-Z][a-z]+$")
    counts = Counter()
    for m in facts:
        counts.update({match.group() for c in m.classes if (match := last_word.search(c[0]))})
    candidates = sorted(s for s, n in counts.items() if n >= 2 and len(s) >= 5)
    return rng.sample(candidates, min(k, len(candidates)))


def _subclass_targets(rng, facts, k: int) -> list[str]:
    users: dict[str, set[str]] = defaultdict(set)
    dotted: set[str] = set()
    for m in facts:
        for name, bases, plain in m.classes:
            for b in bases:
                users[b].add(name)
                if not plain:
                    dotted.add(b)
    candidates = sorted(b for b, names in users.items()
                        if 2 <= len(names) <= 12 and b not in dotted and len(b) >= 4 and b != "object")
    return rng.sample(candidates, min(k, len(candidates)))


def generate(seed: int, size: int, *, with_delegate: bool = True) -> Case:
    rng = random.Random(f"codeqa:{seed}:{size}")
    sources = _select_files(rng, size)
    facts = [facts_of(s) for s in sources]
    parsed = [m for m in facts if m.parsed]
    prefix = f"codeqa-{size}"
    qs: list[Question] = []

    def add(kind: str, family: str, target: str, answer) -> None:
        qs.append(Question(f"{prefix}-{kind}-{target}", QUESTIONS[kind].format(target), str(answer), family))

    for name in _define_targets(rng, sources, parsed, "function", 2):
        add("define_function", "define", name, define_truth(parsed, name, "function"))
    for name in _define_targets(rng, sources, parsed, "class", 1):
        add("define_class", "define", name, define_truth(parsed, name, "class"))
    for param in _params_targets(rng, parsed, 2):
        add("params", "params", param, params_truth(parsed, param))
    for suffix in _suffix_targets(rng, parsed, 1):
        add("suffix", "suffix", suffix, suffix_truth(parsed, suffix))
    for base in _subclass_targets(rng, parsed, 2):
        add("subclass", "subclass", base, subclass_truth(parsed, base))
    if with_delegate and len(parsed) >= 3:
        paths = sorted(m.path for m in rng.sample(parsed, 3))
        param = rng.choice(["self", "name", "value", "data"])
        qs.append(Question(f"{prefix}-delegate", delegate_question(paths, param),
                           delegate_truth(parsed, paths, param), "delegate"))
    documents = [{"path": s.relpath, "text": s.text} for s in sources]
    return Case("codeqa", size, seed, documents, qs, sum(s.tokens for s in sources),
                notes={"modules": len(sources), "unparsed": len(facts) - len(parsed)})
