"""Suite generators: deterministic by seed, and every answer re-derived here
from the generated corpus text by an independent reading (regexes, a second
`ast` walk), never taken from the generator's own bookkeeping."""
from __future__ import annotations

import ast
import itertools
import re
from collections import Counter, defaultdict

import pytest

from rlm_ray.bench.suites import SUITES, codeqa, oolong, sniah
from rlm_ray.tokens import count_tokens


@pytest.mark.parametrize("name,size", [("sniah", 8192), ("oolong", 8192), ("codeqa", 65536)])
def test_same_seed_same_case_other_seed_other_case(name, size):
    generate = SUITES[name].generate
    a, b, c = generate(0, size), generate(0, size), generate(1, size)
    assert a.documents == b.documents and a.questions == b.questions
    assert a.documents != c.documents
    assert a.questions and all(q.answer for q in a.questions)


@pytest.mark.parametrize("size", [8192, 2 ** 16])
def test_sniah_each_needle_once_at_its_depth(size):
    case = sniah.generate(3, size)
    text = "".join(d["text"] for d in case.documents)
    total = count_tokens(text)
    assert abs(total - size) / size < 0.03              # the haystack has the asked size
    needles = re.findall(r"^The secret code for (\S+) is (\d+)\.$", text, re.M)
    assert len(needles) == len(sniah.DEPTHS)
    codes = dict(needles)
    for q, depth in zip(case.questions, sniah.DEPTHS):
        key = re.fullmatch(r"What is the secret code for (\S+)\?", q.question).group(1)
        assert text.count(f"secret code for {key} ") == 1
        assert codes[key] == q.answer
        position = count_tokens(text[: text.index(f"The secret code for {key} ")])
        assert abs(position / total - depth) < 0.05, (depth, position / total)


def test_sniah_reaches_8m_tokens_from_real_stdlib_text():
    case = sniah.generate(0, 2 ** 23)
    assert case.tokens >= 2 ** 23
    paths = [d["path"] for d in case.documents]
    assert len(set(paths)) == len(paths)
    assert any(p.startswith("copy1/") for p in paths)   # the stdlib alone is < 8M tokens
    assert sum("def " in d["text"] for d in case.documents) > 1000


def test_oolong_answers_recounted_from_text():
    case = oolong.generate(5, 2 ** 15)
    lines = [l for d in case.documents for l in d["text"].splitlines()]
    parsed = [re.fullmatch(r"record (\d+) \| user (u\d{3}) \| label: (\w+) \| (.+)", l) for l in lines]
    assert all(parsed) and len(parsed) == case.notes["records"]
    labels = Counter(m.group(3) for m in parsed)
    users = defaultdict(set)
    for m in parsed:
        users[m.group(3)].add(m.group(2))
    families = Counter(q.family for q in case.questions)
    assert families == {"label-count": 3, "label-top": 1, "label-pairs": 2}
    for q in case.questions:
        if q.family == "label-count":
            label = re.fullmatch(r"How many records are labelled '(\w+)'\?", q.question).group(1)
            assert q.answer == str(labels[label])
        elif q.family == "label-top":
            (top, n), (_, runner_up) = labels.most_common(2)
            assert n > runner_up and q.answer == top
        else:
            label = re.fullmatch(r"Which pairs of users both have records labelled '(\w+)'\?",
                                 q.question).group(1)
            pairs = [f"{a}-{b}" for a, b in itertools.combinations(sorted(users[label]), 2)]
            assert q.answer == ", ".join(pairs)


def _second_walk(texts: dict[str, str]):
    """An independent reading of the modules: a NodeVisitor, not ast.walk."""
    class Reader(ast.NodeVisitor):
        def __init__(self):
            self.functions, self.classes = [], []

        def _function(self, node):
            a = node.args
            every = a.posonlyargs + a.args + a.kwonlyargs + [x for x in (a.vararg, a.kwarg) if x]
            self.functions.append((node.name, {x.arg for x in every}))
            self.generic_visit(node)

        visit_FunctionDef = visit_AsyncFunctionDef = _function

        def visit_ClassDef(self, node):
            bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", None) for b in node.bases}
            self.classes.append((node.name, bases))
            self.generic_visit(node)

    readers = {}
    for path, text in texts.items():
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        readers[path] = Reader()
        readers[path].visit(tree)
    return readers


def test_codeqa_answers_rederived_by_a_second_ast_walk():
    case = codeqa.generate(2, 2 ** 17)
    readers = _second_walk({d["path"]: d["text"] for d in case.documents})
    checked = Counter()
    for q in case.questions:
        if m := re.fullmatch(r"Which module defines the (function|class) (\w+)\?", q.question):
            kind, name = m.groups()
            found = sorted(p for p, r in readers.items()
                           if name in {n for n, *_ in (r.functions if kind == "function" else r.classes)})
            assert q.answer == ", ".join(found)
        elif m := re.fullmatch(r"How many functions take a parameter named (\w+)\?", q.question):
            assert q.answer == str(sum(m.group(1) in ps for r in readers.values() for _, ps in r.functions))
        elif m := re.fullmatch(r"How many modules define a class whose name ends in '(\w+)'\?", q.question):
            assert q.answer == str(sum(any(n.endswith(m.group(1)) for n, _ in r.classes)
                                       for r in readers.values()))
        elif m := re.fullmatch(r"Which classes inherit from (\w+)\?", q.question):
            assert q.answer == ", ".join(sorted({n for r in readers.values() for n, bases in r.classes
                                                 if m.group(1) in bases}))
        elif m := re.fullmatch(r"For each of the paths (.+): how many functions take a parameter "
                               r"named (\w+)\?", q.question):
            paths, param = m.group(1).split(", "), m.group(2)
            assert q.answer == ", ".join(
                f"{p}={sum(param in ps for _, ps in readers[p].functions)}" for p in paths)
        else:
            pytest.fail(f"question outside the families table: {q.question}")
        checked[q.family] += 1
    assert {"define", "params", "subclass", "delegate"} <= set(checked)


def test_compare_fanout_has_exactly_n_pieces_as_the_policy_cuts_them():
    from rlm_ray.bench import compare_workloads
    from rlm_ray.sim.policy_repl_lib import pack_texts

    work = compare_workloads.fanout(16, seed=4)
    lines = work.text.splitlines()
    pieces = compare_workloads.pack_lines(lines)
    assert len(pieces) == work.pieces == 16
    assert pack_texts(lines, compare_workloads.PIECE_CHARS) == pieces
    label = re.fullmatch(r"How many records are labelled '(\w+)'\?", work.tasks[0].question).group(1)
    assert work.tasks[0].answer == str(sum(f"| label: {label} |" in line for line in lines))
    batch = compare_workloads.batch(50, 2, seed=4)
    assert len(batch.tasks) == 50 and len({t.task_id for t in batch.tasks}) == 50
    assert "".join(d["text"] for d in batch.documents) == batch.text
