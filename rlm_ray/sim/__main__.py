"""`python -m rlm_ray.sim [--port P ...]`: the same as `rlm-ray sim`."""
from __future__ import annotations

import argparse
import sys

from rlm_ray.errors import UserError
from rlm_ray.sim.commands import add_sim_arguments, serve_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlm_ray.sim",
                                     description="the rlm-ray provider SIMULATOR")
    add_sim_arguments(parser)
    try:
        return serve_command(parser.parse_args(argv))
    except UserError as exc:
        print(f"rlm-ray sim: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
