"""LongBench-v2 CodeQA (`THUDM/LongBench-v2`, `data.json`).

`data.json` is a JSON list of {_id, domain, sub_domain, difficulty, length,
question, choice_A, choice_B, choice_C, choice_D, answer (a letter), context}
(all strings). The paper's CodeQA is the "Code Repository Understanding"
domain. LongBench-v2 ships each repository as one text (`context`, the files
concatenated), and that text is what the model gets here, as a `str`
context: splitting it back into files would guess at boundaries the
publisher did not mark. The question carries the four choices and
LongBench-v2's answer format, so its letter extraction applies.
"""
from __future__ import annotations

from pathlib import Path

from rlm_ray.bench.paper import scoring
from rlm_ray.bench.paper.registry import LoadOptions, dataset
from rlm_ray.bench.paper.tasks import Task, iter_files, read_rows, require_columns, sample
from rlm_ray.errors import UserError

COLUMNS = ("_id", "domain", "sub_domain", "difficulty", "length", "question", "choice_A",
           "choice_B", "choice_C", "choice_D", "answer", "context")
DOMAIN = "Code Repository Understanding"


def question_text(row: dict) -> str:
    choices = "\n".join(f"({letter}) {row['choice_' + letter]}" for letter in "ABCD")
    return (f"Answer this multiple-choice question about the code repository in the context.\n\n"
            f"Question: {row['question']}\n\nChoices:\n{choices}\n\n"
            'Format your answer as follows: "The correct answer is (insert answer here)".')


def _score(task: Task, answer: str | None) -> scoring.Scored:
    return scoring.score_choice(answer, task.expected)


@dataset("longbench-codeqa", title="LongBench-v2 CodeQA", source="THUDM/LongBench-v2 data.json",
         score=_score)
def load_codeqa(files: list[Path], opts: LoadOptions) -> list[Task]:
    rows: list[dict] = []
    for path in iter_files(files, (".json", ".jsonl", ".parquet")):
        part = read_rows(path)
        require_columns(part, COLUMNS, str(path))
        rows += [r for r in part if r["domain"] == DOMAIN]
    if not rows:
        raise UserError(f"LongBench-v2: no rows of the domain {DOMAIN!r} in --data (data.json)")
    for r in rows:
        if str(r["answer"]).strip().upper() not in ("A", "B", "C", "D"):
            raise UserError(f"LongBench-v2 row {r['_id']}: answer must be A-D, got {r['answer']!r}")
    return [Task(query_id=f"codeqa-{r['_id']}", question=question_text(r),
                 expected=str(r["answer"]).strip().upper(), context_text=str(r["context"]),
                 meta={"difficulty": str(r["difficulty"]), "length": str(r["length"])})
            for r in sample(rows, opts.limit, opts.seed)]
