"""Benchmark of the scripted root policy on a real codebase: does `sim/rlm-policy`
answer each code family exactly (against `ast`), and at what cost in turns,
sub-calls and prompt sizes? The figures other benchmarks build on.

    python -m rlm_ray.bench.policy [--source DIR] [--corpus URI] [--local]

SOURCE defaults to the whole CPython stdlib of this interpreter (~10M tokens;
the first ingest takes minutes, later ones rewrite nothing). Targets are
picked from the truth itself (a class defined in one module, the commonest
parameter names, ...), so any codebase works. Model traffic goes to an
in-process provider SIMULATOR, never a real model.
"""
from __future__ import annotations

import argparse
import ast
import re
import sysconfig
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)
_SAID = re.compile(r"sub-models said: (.*) \| ast says: (.*)")


@dataclass
class Facts:
    """What `ast` says about every module that parses: the benchmark's truth."""
    functions: dict[str, list[tuple[str, frozenset[str]]]]   # path -> (name, params)
    classes: dict[str, list[tuple[str, tuple[str, ...]]]]    # path -> (name, base names)

    @classmethod
    def of(cls, root: Path) -> "Facts":
        functions, classes = {}, {}
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if "site-packages" in rel or "__pycache__" in rel:
                continue
            try:
                tree = ast.parse(path.read_bytes().decode("utf-8", "replace"))
            except (SyntaxError, ValueError):
                continue
            functions[rel], classes[rel] = [], []
            for node in ast.walk(tree):
                if isinstance(node, _FUNCS):
                    a = node.args
                    every = a.posonlyargs + a.args + a.kwonlyargs + [
                        v for v in (a.vararg, a.kwarg) if v]
                    functions[rel].append((node.name, frozenset(x.arg for x in every)))
                elif isinstance(node, ast.ClassDef):
                    bases = tuple(b.id if isinstance(b, ast.Name) else b.attr
                                  for b in node.bases if isinstance(b, (ast.Name, ast.Attribute)))
                    classes[rel].append((node.name, bases))
        return cls(functions, classes)

    def define(self, name: str) -> str:
        return ", ".join(sorted(p for p, cs in self.classes.items() if name in dict(cs)))

    def params(self, param: str, only: str | None = None) -> int:
        return sum(param in ps for p, fs in self.functions.items() if only in (None, p)
                   for _, ps in fs)

    def suffix(self, suffix: str) -> int:
        return sum(any(n.endswith(suffix) for n, _ in cs) for cs in self.classes.values())

    def subclass(self, base: str) -> str:
        return ", ".join(sorted({n for cs in self.classes.values() for n, bs in cs if base in bs}))


def questions(facts: Facts) -> list[tuple[str, str, str]]:
    """(family, question, expected) with targets picked from the truth."""
    class_homes = Counter(n for cs in facts.classes.values() for n in {n for n, _ in cs})
    unique_class = sorted(n for n, k in class_homes.items() if k == 1 and len(n) > 12)[0]
    param_use = Counter(p for fs in facts.functions.values() for _, ps in fs for p in ps)
    common = [p for p, _ in param_use.most_common(4) if p != "self"][:2]
    bases = Counter(b for cs in facts.classes.values() for _, bs in cs for b in bs)
    base = next(b for b, _ in bases.most_common() if b not in ("object", "Exception"))
    paths = sorted(facts.functions, key=lambda p: -len(facts.functions[p]))[:3]
    out = [("define", f"Which module defines the class {unique_class}?", facts.define(unique_class)),
           ("suffix", "How many modules define a class whose name ends in 'Error'?",
            str(facts.suffix("Error"))),
           ("subclass", f"Which classes inherit from {base}?", facts.subclass(base))]
    out += [("params", f"How many functions take a parameter named {p}?", str(facts.params(p)))
            for p in common]
    out.append(("delegate", f"For each of the paths {', '.join(paths)}: how many functions take "
                f"a parameter named {common[0]}?",
                ", ".join(f"{p}={facts.params(common[0], p)}" for p in paths)))
    return out


def run(source: Path, corpus_uri: str, local: bool) -> None:
    from rlm_ray.corpus import Corpus, ingest
    from rlm_ray.engine import RLM
    from rlm_ray.sim import SimServer

    started = time.perf_counter()
    ingest([str(source)], corpus_uri, exclude=["site-packages/", "__pycache__/"])
    corpus = Corpus.open(corpus_uri)
    facts = Facts.of(source)
    print(f"corpus: {corpus.stats['documents']} documents, {len(corpus):,} tokens, "
          f"{corpus.stats['chunks']} chunks (ingest+truth {time.perf_counter() - started:.0f} s); "
          "model: provider SIMULATOR sim/rlm-policy")
    header = (f"{'family':9} {'ok':3} {'turns':>5} {'subs':>5} {'rlms':>4} {'max sub tok':>11} "
              f"{'sub-model raw':>13} {'wall s':>7}  question")
    print(header)
    print("-" * len(header))
    with SimServer() as server:
        rlm = RLM("openai/sim/rlm-policy", api_base=server.base_url, max_depth=2,
                  max_iterations=10, local=local)
        for family, question, expected in questions(facts):
            result = rlm.answer(corpus, question)
            subs = [c for c in result.calls if c["kind"] == "sub"]
            said = [m.groups() for s in result.steps for m in _SAID.finditer(s["output"] or "")]
            raw = "-" if not said else ("agrees" if said[-1][0] == said[-1][1] else "differs")
            print(f"{family:9} {'yes' if result.answer == expected else 'NO':3} "
                  f"{result.iterations:>5} {len(subs):>5} "
                  f"{sum(c['kind'] == 'rlm' for c in result.calls):>4} "
                  f"{max((c['prompt_tokens'] or 0 for c in subs), default=0):>11} {raw:>13} "
                  f"{result.wall_s:>7.1f}  {question[:70]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    parser.add_argument("--corpus", default=".bench/policy-corpus")
    parser.add_argument("--local", action="store_true", help="run in this process, not on Ray")
    args = parser.parse_args(argv)
    run(args.source, args.corpus, args.local)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
