"""`python -m ganaug.launch`: the command line of the launcher (ganaug/launch/__init__.py).

    python -m ganaug.launch --standalone --nproc-per-node 2 -m ganaug train --run-dir runs/a ...

torchrun's arguments, parsed by torchrun's own parser (a mistake in them is one line); the ganaug
command it will start is checked once by `ganaug.cli.preflight` before any worker starts.
"""

from __future__ import annotations

import sys

from ganaug.errors import one_line
from ganaug.launch import ganaug_arguments, run_torchrun


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.run import get_args_parser

    parser = get_args_parser()
    parser.prog = "python -m ganaug.launch"

    def usage_error(message: str):  # torchrun's own arguments: one line too, not argparse's usage block
        print(f"ganaug launch: error: {one_line(message)} (see python -m ganaug.launch --help)", file=sys.stderr)
        sys.exit(2)

    parser.error = usage_error
    args = parser.parse_args(argv)
    command = ganaug_arguments(args)
    if command is not None:
        from ganaug.cli import preflight

        status = preflight(command)
        if status:
            return status
    return run_torchrun(args)


if __name__ == "__main__":
    sys.exit(main())
