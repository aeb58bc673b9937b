r"""A scheduled pipeline run: `python jobs/pipeline.py SPEC.yaml [--date YYYY-MM-DD]`.

One YAML spec names the sources, corpus URI, questions, model, limits,
budget and output URI (see jobs/specs/example.yaml). Each run re-ingests
incrementally, answers only new or changed questions (or all, per the spec's
`rerun`), and writes results under `<output>/run_date=<date>/`. Running the
same date twice changes nothing, so a scheduler may retry freely:

    # crontab: every day at 02:00 UTC, on a machine that can reach the cluster
    0 2 * * * cd /srv/rlm-ray && RAY_AUTH_MODE=disabled ray job submit \
        --address http://head:8265 --working-dir . -- python jobs/pipeline.py \
        jobs/specs/example.yaml --date $(date -u +\%F)
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted rlm_ray first

from rlm_ray.batch.job_entry import pipeline_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return pipeline_main(argv)


if __name__ == "__main__":
    sys.exit(main())
