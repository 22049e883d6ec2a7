"""The ``contam`` command: ``contam plan ...`` and ``contam plan gather ...``.

The workflow itself runs through ``snakemake``; this command holds what a user
asks of it outside a run.
"""

from __future__ import annotations

import sys

USAGE = """usage: contam plan --configfile FILE [--gpus K] [--cpus C] [--gpu-kind KIND] ...
       contam plan gather --configfile FILE [--benchmarks DIR] [--ledger DIR]

  plan         what a config will cost, before anything is submitted (contam.plan)
  plan gather  add a finished run's benchmark files to the ledger the plan is fitted on
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "plan":
        print(USAGE, file=sys.stderr, end="")
        return 2
    from contam import plan

    return plan.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
