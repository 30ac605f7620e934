"""Split a labelled data source into a few labelled images per class and an unlabelled rest: what a
user with few labels has. Used by `make demo`; the split is seeded.

    python scripts/few_labels.py --source digits --k 5 --out runs/demo/data
    -> runs/demo/data/labelled.npz (K per class, with labels), unlabelled.npz (the rest, no labels)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ganaug.config import DataConfig
from ganaug.data import load_dataset
from ganaug.evaluate.study import k_per_class, write_labelled_npz
from ganaug.files import write_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="digits")
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--k", type=int, default=5, help="labelled images per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    data = load_dataset(DataConfig(source=args.source, resolution=args.resolution, in_memory=True))
    labelled = k_per_class(data.labels, torch.arange(len(data.labels)), args.k, args.seed)
    rest = np.setdiff1d(np.arange(len(data.labels)), labelled.numpy())
    out = Path(args.out)
    write_labelled_npz(out / "labelled.npz", data.images[labelled], data.labels[labelled], data.class_names)
    write_atomic(out / "unlabelled.npz",
                 lambda f: np.savez(f, images=data.images[torch.as_tensor(rest)].permute(0, 2, 3, 1).numpy()))
    print(f"{out / 'labelled.npz'}: {len(labelled)} labelled images; {out / 'unlabelled.npz'}: {len(rest)} unlabelled")


if __name__ == "__main__":
    main()
