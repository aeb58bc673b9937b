"""Question grids: `--for-each GLOB` turns a file of question templates into
one row per (template, matching folder or document) of the corpus.

A cell's id is `template_id@scope` (stable across runs, so resume and
pipelines work per cell), its question is the template with the known
placeholders filled (`{scope}`: the folder or document path, `{scope_name}`:
its last segment; any other braces stay as written), and its `scope` is that
folder or document, so the host can hold the question to it.

Planning stays columnar: the scopes come from the corpus's document index
with vectorised RE2 matching, the cells are three Arrow columns (id, template
index, scope index), resume is one `is_in` against the finished ids, and a
cell becomes a `Query` only when it is about to run. A 100,000-cell grid
plans in a few hundred MB and seconds (see `rlm-ray bench grid`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc

from rlm_ray.batch.queries import Query
from rlm_ray.corpus.scopes import escape_glob, glob_regex, group_digests, match_mask
from rlm_ray.errors import UserError

PLACEHOLDERS = ("{scope}", "{scope_name}")
SCOPES_SCHEMA = pa.schema([("label", pa.string()), ("documents", pa.int64()),
                           ("tokens", pa.int64()), ("sha256", pa.string())])


def _folder_pairs(index: pa.Table, pattern: str) -> tuple[pa.Array, pa.Array]:
    """(document row, folder label) for every folder matching `pattern` that holds the document."""
    paths = index.column("path").combine_chunks()
    parts = pc.split_pattern(paths, "/")
    depth = pc.list_value_length(parts)
    regex = glob_regex(pattern, folder_means_tree=False)
    rows, labels = [], []
    deepest = (pc.max(depth).as_py() or 1) - 1   # the last segment is the file name
    for level in range(1, deepest + 1):
        deep_enough = pc.greater(depth, level)
        prefix = pc.binary_join(pc.list_slice(parts, 0, level), "/")
        folder = pc.binary_join_element_wise(prefix, "", "/")   # "a/b" -> "a/b/"
        hit = pc.and_(deep_enough, pc.match_substring_regex(folder, regex))
        where = pc.indices_nonzero(hit)
        rows.append(where)
        labels.append(pc.take(folder, where))
    if not rows:
        return pa.array([], pa.uint64()), pa.array([], pa.string())
    return pa.concat_arrays(rows), pa.concat_arrays(labels)


def expand_scopes(index: pa.Table, pattern: str) -> tuple[pa.Table, pa.Table]:
    """(scopes: label, documents, tokens, sha256 sorted by label; the document
    pairs behind them) for `pattern` over the corpus's document index."""
    pattern = pattern.strip()
    if not pattern:
        raise UserError("--for-each needs a glob, e.g. 'repos/*/' (folders) or 'docs/*.md'")
    if pattern.endswith("/"):
        rows, labels = _folder_pairs(index, pattern)
    else:
        rows = pc.indices_nonzero(match_mask(index.column("path"), [pattern]).combine_chunks())
        labels = pc.take(index.column("path").combine_chunks(), rows)
    if len(rows) == 0:
        kind = "folder" if pattern.endswith("/") else "document"
        sample = ", ".join(index.column("path").slice(0, 3).to_pylist())
        raise UserError(f"--for-each {pattern!r} matches no {kind} of the corpus "
                        f"({index.num_rows} documents, e.g. {sample})")
    pairs = pa.table({"label": labels, "path": pc.take(index.column("path"), rows),
                      "n_tokens": pc.take(index.column("n_tokens"), rows),
                      "sha256": pc.take(index.column("sha256"), rows)}).sort_by(
        [("label", "ascending"), ("path", "ascending")])
    # Sorted, so each scope is one run of equal labels: sizes from run ends and a
    # cumulative sum (no hash aggregation: planning stays on the compute kernels).
    runs = pc.run_end_encode(pairs.column("label").combine_chunks())
    ends = runs.run_ends.cast(pa.int64())
    counts = pc.subtract(ends, pa.concat_arrays([pa.array([0], pa.int64()), ends[:-1]]))
    cumulative = pc.cumulative_sum(pairs.column("n_tokens").combine_chunks().cast(pa.int64()))
    totals = pc.take(cumulative, pc.subtract(ends, 1))
    tokens = pc.subtract(totals, pa.concat_arrays([pa.array([0], pa.int64()), totals[:-1]]))
    digests = group_digests(pairs.column("path"), pairs.column("sha256"), counts.to_pylist())
    scopes = pa.table([runs.values, counts, tokens, pa.array(digests)], schema=SCOPES_SCHEMA)
    return scopes, pairs


def fill(question: str, label: str) -> str:
    """The known placeholders of a template, filled; every other brace as written."""
    name = label.rstrip("/").rsplit("/", 1)[-1]
    return question.replace("{scope}", label).replace("{scope_name}", name)


def check_templates(templates: list[Query]) -> None:
    for t in templates:
        where = f"template {t.query_id}"
        if "@" in t.query_id:
            raise UserError(f"{where}: a template id may not contain '@' (cells are "
                            "named template_id@scope)")
        if t.scope is not None or t.text_context is not None:
            raise UserError(f"{where}: with --for-each a template's scope comes from the "
                            "grid; drop its scope/context columns")


@dataclass
class Grid:
    pattern: str
    templates: list[Query]
    scopes: pa.Table     # SCOPES_SCHEMA
    cells: pa.Table      # query_id, template (row of `templates`), scope (row of `scopes`)

    @property
    def size(self) -> int:
        return self.cells.num_rows

    def todo_mask(self, answers: pa.Table, retry_failed: bool) -> pa.ChunkedArray:
        """Cells still to run, given the committed answers (latest per query_id)."""
        # Like the runner's rule: any finished status counts, unless retrying failures.
        done = answers if not retry_failed else answers.filter(pc.equal(answers["status"], "ok"))
        finished = done.column("query_id")
        finished_ids = finished.combine_chunks()
        return pc.invert(pc.is_in(self.cells.column("query_id"), value_set=finished_ids))

    def queries(self, mask: pa.ChunkedArray | None = None) -> list[Query]:
        """The cells (those of `mask`) as runnable rows, filled in only now."""
        cells = self.cells if mask is None else self.cells.filter(mask)
        labels = self.scopes.column("label").to_pylist()
        digests = self.scopes.column("sha256").to_pylist()
        return [replace(self.templates[t], query_id=qid,
                        question=fill(self.templates[t].question, labels[s]),
                        template_id=self.templates[t].query_id,
                        scope=(escape_glob(labels[s]),), scope_sha256=digests[s])
                for qid, t, s in zip(cells.column("query_id").to_pylist(),
                                     cells.column("template").to_pylist(),
                                     cells.column("scope").to_pylist())]


def build_grid(index: pa.Table, templates: list[Query], pattern: str) -> Grid:
    """Templates x scopes matching `pattern`, scope-major (a folder's questions adjacent)."""
    check_templates(templates)
    scopes, _ = expand_scopes(index, pattern)
    n_templates = len(templates)
    cell = pa.array(range(n_templates * scopes.num_rows), pa.int32())
    scope_of = pc.divide(cell, n_templates)   # integer division: scope-major order
    template_of = pc.subtract(cell, pc.multiply(scope_of, n_templates))
    template_ids = pa.array([t.query_id for t in templates], pa.string())
    query_ids = pc.binary_join_element_wise(pc.take(template_ids, template_of),
                                            pc.take(scopes.column("label"), scope_of), "@")
    cells = pa.table({"query_id": query_ids, "template": template_of, "scope": scope_of})
    return Grid(pattern, templates, scopes, cells)


def dry_run_plan(grid: Grid, answers: pa.Table, rlm: dict, *, retry_failed: bool,
                 calls_per_question: int, concurrency: int) -> tuple[dict, int]:
    """(the `--dry-run` plan, cells to run): columnar all the way, no cell becomes a Query."""
    from rlm_ray.batch.plan import estimate

    todo = int(pc.sum(grid.todo_mask(answers, retry_failed).cast(pa.int64())).as_py() or 0)
    plan = estimate(range(todo), rlm, calls_per_question=calls_per_question,
                    total=grid.size, concurrency=concurrency)
    return {**plan_fields(grid), **plan}, todo


def plan_fields(grid: Grid) -> dict:
    """The grid's lines of a `--dry-run` plan."""
    return {"for_each": grid.pattern, "grid_templates": len(grid.templates),
            "grid_scopes": grid.scopes.num_rows, "grid_cells": grid.size,
            "grid_documents": int(pc.sum(grid.scopes.column("documents")).as_py() or 0),
            "grid_tokens": int(pc.sum(grid.scopes.column("tokens")).as_py() or 0)}


def with_scope_digests(queries: list[Query], index: pa.Table) -> list[Query]:
    """Rows with a scope of their own (not grid cells) get their scope's digest,
    computed once per distinct scope."""
    from rlm_ray.corpus.scopes import scope_size

    digests: dict[tuple[str, ...], str] = {}
    out = []
    for query in queries:
        if query.scope is not None and query.scope_sha256 is None:
            if query.scope not in digests:
                digests[query.scope] = scope_size(index, query.scope).sha256
            query = replace(query, scope_sha256=digests[query.scope])
        out.append(query)
    return out
