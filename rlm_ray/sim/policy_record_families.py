"""Record and haystack families (needle, label-count, label-top, label-pairs),
the deliberate-typo `recover` family and the catch-all for unknown phrasings.

Each works over a corpus handle or a plain `str` context (checked in the REPL
with `isinstance(context, str)`), as in the paper's S-NIAH and OOLONG tasks.
"""
from __future__ import annotations

import re
from collections.abc import Callable

from rlm_ray.sim.policy_core import PREVIEW, SO_FAR, Code, Step, register_family
from rlm_ray.sim.policy_repl_lib import prelude


# -- needle ------------------------------------------------------------------
def _needle_search(step: Step) -> Code:
    key = step.match.group(1)
    if step.attempt == 0:
        corpus_hits = "[h['text'] for h in context.grep(phrase, limit=100, regex=False)]"
    else:  # grep failed: the same search in SQL, excerpting the matching lines
        corpus_hits = ("[line for row in context.sql(\"SELECT text FROM chunks WHERE "
                       "contains(lower(text), '\" + phrase.lower().replace(\"'\", \"''\") + "
                       "\"') ORDER BY doc_id, chunk_id LIMIT 50\") for line in "
                       "row['text'].splitlines() if phrase.lower() in line.lower()]")
    code = "\n".join([
        prelude(),
        f"key = {key!r}",
        "phrase = f'secret code for {key}'",
        "if isinstance(context, str):",
        "    spans = [context[max(0, m.start() - 200): m.end() + 200]",
        "             for m in re.finditer(re.escape(phrase), context, re.I)][:100]",
        "else:",
        f"    spans = {corpus_hits}",
        "print(f'hits={len(spans)}')",
        "for span in spans[:3]:",
        "    print(' ', span.strip()[:300])",
    ])
    return Code("First a look at the context, then I search it for the key's sentence "
                "before reading anything.", code, preview=PREVIEW,
                after="The hits tell me where the code is.")


def _needle_extract(step: Step) -> Code:
    key = step.match.group(1)
    lines = []
    if "hits=0\n" in step.conv.last_output():
        # The exact sentence is not there: widen to any mention of the key.
        lines += [
            "if isinstance(context, str):",
            "    spans = [context[max(0, m.start() - 300): m.end() + 300]",
            "             for m in re.finditer(re.escape(key), context, re.I)][:100]",
            "else:",
            "    spans = [h['text'] for h in context.grep(key, limit=100, regex=False)]",
        ]
    lines += [
        "excerpt = '\\n'.join(spans)[:40000]",
        f"value = llm_query('Extract the secret code for ' + key + ' from this text. Reply with "
        "the code only.\\n\\n' + excerpt).strip()",
        "answer['content'] = value",
        f"print({SO_FAR!r}, value)",
    ]
    return Code(f"A sub-model reads the excerpts and extracts the code for {key}.",
                "\n".join(lines), after=f"The sub-model's reply in `value` is the code for {key}.",
                final="value")


register_family("needle", r"What is the secret code for (.+?)\?", _needle_search, _needle_extract)


# -- label-* : a map over every piece of the context ------------------------
def _label_explore(step: Step) -> Code:
    code = "\n".join([
        prelude(),
        "if isinstance(context, str):",
        "    sample = context[:400]",
        "else:",
        "    sample = context.sql('SELECT text FROM chunks ORDER BY doc_id, chunk_id LIMIT 1')"
        "[0]['text'][:400]",
        "print('sample:', sample)",
        "pieces = context_pieces()",
        "print(f'pieces={len(pieces)} (largest {max(map(len, pieces), default=0)} chars)')",
    ])
    return Code("Let me look at the context and the records' format first, then cut the "
                "whole context into pieces.", code, preview=PREVIEW)


def _label_probe(instruction: Callable[[Step], str]) -> Callable[[Step], Code]:
    """One sub-call on the first piece before the whole map, as real models
    check a sub-model's reply format before paying for hundreds of calls."""
    def stage(step: Step) -> Code:
        if step.attempt:   # the probe itself failed: go straight to the map
            return Code("The test call failed; I will check the replies of the full map instead.",
                        "probe = None\nprint('no probe; replies are checked after the map')")
        code = "\n".join([
            f"probe = llm_query({instruction(step)!r} + '\\n\\n' + pieces[0]) if pieces else ''",
            "print('probe reply on piece 0:', repr(str(probe)[:200]))",
        ])
        return Code("Before sending every piece, I try the sub-model on the first one to see "
                    "what its replies look like.", code,
                    after="If the reply has the format I asked for, the full map can follow.")
    return stage


def _label_map(instruction: Callable[[Step], str], aggregate: str) -> Callable[[Step], Code]:
    def stage(step: Step) -> Code:
        lines = [f"prompts = [{instruction(step)!r} + '\\n\\n' + p for p in pieces]"]
        if step.attempt == 0:
            lines.append("replies = map_prompts(prompts)")
        else:  # the single big batch failed: go in waves, keeping what arrived
            lines += ["replies = []",
                      "for i in range(0, len(prompts), 32):",
                      "    replies += map_prompts(prompts[i:i + 32])"]
        lines += [
            "failed = sum(str(r).startswith('Error') for r in replies)",
            aggregate,
            "answer['content'] = result",
            "print(len(prompts), 'sub-calls,', failed, 'failed')",
            f"print({SO_FAR!r}, result)",
        ]
        look = "\n".join(["# a few of the sub-model answers, to check they are well-formed",
                          "for i, answer in enumerate(replies[:3]):",
                          "    print(f'piece {i} ->', str(answer)[:80])"])
        return Code("Sub-models read every piece in one concurrent batch; I aggregate in code.",
                    "\n".join(lines), look=look,
                    after="I check the aggregate before answering.")
    return stage


def _label_final(step: Step) -> Code:
    return Code("Every piece was read by a sub-model and the aggregate above is complete, "
                "so `result` is the answer.", final="result")


_COUNT = ("result = str(sum(int(r.strip()) for r in map(str, replies) "
          "if r.strip().isdigit()))")
_TOP = "\n".join([
    "totals = Counter()",
    "for reply in map(str, replies):",
    "    for line in reply.splitlines():",
    "        label, _, n = line.rpartition(':')",
    "        if label.strip() and n.strip().isdigit():",
    "            totals[label.strip()] += int(n)",
    "# ties go to the alphabetically first label",
    "result = min(totals, key=lambda l: (-totals[l], l)) if totals else 'none'",
    "print(totals.most_common(5))",
])
_PAIRS = "\n".join([
    "users = set()",
    "for reply in map(str, replies):",
    "    if reply.strip() != 'NONE' and not reply.startswith('Error'):",
    "        users.update(u.strip() for u in reply.split(',') if u.strip())",
    "ordered = sorted(users)",
    "result = ', '.join(f'{a}-{b}' for i, a in enumerate(ordered) for b in ordered[i + 1:]) "
    "or 'none'",
    "print(len(users), 'users')",
])


def _count_instruction(step: Step) -> str:
    return (f"Count the records labelled '{step.match.group(1)}' in the text below. "
            "Reply with the number only.")


def _users_instruction(step: Step) -> str:
    return (f"List the users with records labelled '{step.match.group(1)}' in the text below. "
            "Reply with their names, comma-separated, or NONE.")


def _per_label_instruction(step: Step) -> str:
    return ("Count the records per label in the text below. Reply with one line "
            "'label: count' per label.")


register_family("label-count", r"How many records are labelled '(.+?)'\?",
                _label_explore, _label_probe(_count_instruction),
                _label_map(_count_instruction, _COUNT), _label_final)
register_family("label-top", r"Which label is the most frequent\?",
                _label_explore, _label_probe(_per_label_instruction),
                _label_map(_per_label_instruction, _TOP), _label_final)
register_family("label-pairs", r"Which pairs of users both have records labelled '(.+?)'\?",
                _label_explore, _label_probe(_users_instruction),
                _label_map(_users_instruction, _PAIRS), _label_final)


# -- recover: the first block has a typo on purpose --------------------------
def _recover(step: Step) -> Code:
    a, b = step.match.group(1), step.match.group(2)
    if step.attempt == 0:
        return Code("I multiply the two numbers.", f"product = {a} * {b}\nprint(prodcut)")
    saw = "a NameError" if "NameError" in step.conv.last_output() else "an error"
    return Code(f"The traceback shows {saw} from my typo; I fix the name and answer.",
                f"product = {a} * {b}\nanswer['content'] = str(product)\n"
                f"print({SO_FAR!r}, product)", after="The product is in `product`.",
                final="product")


_NUMBER = r"(-?\d+(?:\.\d+)?)"
register_family("recover", rf"Recover from a typo: what is {_NUMBER} times {_NUMBER}\?", _recover)


# -- anything else: explore honestly, then say what could not be determined ---
_STOP_WORDS = frozenset("what which when where does with from that this have many much "
                        "there their about into each most".split())


def _keywords(question: str) -> list[str]:
    words = [w for w in re.findall(r"[A-Za-z_]\w{3,}", question) if w.lower() not in _STOP_WORDS]
    return list(dict.fromkeys(words))[:5]


def _generic_explore(step: Step) -> Code:
    words = _keywords(step.conv.question)
    code = "\n".join([
        f"words = {words!r}",
        "if not words:",
        "    hits = []",
        "elif isinstance(context, str):",
        "    hits = [l for l in context.splitlines() if any(w.lower() in l.lower() for w in words)]",
        "else:",
        "    hits = [h['path'] + ': ' + h['text'] for h in context.grep('|'.join(words), limit=20)]",
        "print(f'hits={len(hits)}')",
        "for h in hits[:5]:",
        "    print(' ', h.strip()[:200])",
        "answer['content'] = f'could not determine the answer ({len(hits)} passages mention "
        "the question terms)'",
    ])
    return Code("I do not know a plan for this question; I look at the context and search "
                "for its terms first.", code, preview=PREVIEW)


def _generic_final(step: Step) -> Code:
    return Code("Nothing I found answers the question; I say so.",
                "summary = answer['content']\nprint(summary)", final="summary")


# Registered last (see policies.py): it matches every question.
GENERIC = (_generic_explore, _generic_final)
