"""`python -m ganaug` (and so `torchrun -m ganaug train ...`)."""

import sys

from ganaug.cli import main

sys.exit(main())
