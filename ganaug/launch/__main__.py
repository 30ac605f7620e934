"""`python -m ganaug.launch`: torchrun with a user error as one clean line (ganaug/torchrun.py).

    python -m ganaug.launch --standalone --nproc-per-node 2 -m ganaug train --run-dir runs/a ...

Its command line is `ganaug.cli.launch_main`, beside the `ganaug` command's: like ganaug/__main__.py,
this module only runs it.
"""

import sys

from ganaug.cli import launch_main

sys.exit(launch_main())
