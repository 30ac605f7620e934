"""Run `ganaug train` (under torchrun) and, after every checkpoint, dump this rank's own weights.

Tests compare the dumps of all ranks: DDP must leave G and D identical everywhere.
"""

import sys

import torch

from ganaug.cli import main
from ganaug.train.trainer import Trainer

_save = Trainer.save


def save_and_dump(self, best=None):
    _save(self, best)
    own = {"G": self.G.state_dict(), "D": self.D.state_dict(), "step": self.step}
    torch.save(own, self.run.path / f"rank{self.info.rank}.pt")


Trainer.save = save_and_dump
sys.exit(main(sys.argv[1:]))
