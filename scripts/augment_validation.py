"""Validation check of a change to `ganaug augment`, before a round of the held-out study declares it:
augment's output for one unit of the study, scored on that unit's validation images only.

The unit is the study's (scripts/augment_study.py: the same split, labelled images, pool and
validation images for a split seed and K). augment runs on the labelled images and the pool with the
arguments after `--`; then the study's augment arm trains on its folder at each budget, one thread,
and is scored on the validation images. The test split is never read.

    python scripts/augment_validation.py --split-seed 105 --k 5 --out runs/teacher1200_105_k5 \
        -- --folds 3 --gan-steps 1000 --teacher-steps 1200

Run again with the same --out, augment resumes and the budgets already scored are kept
(OUT/validation.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from augment_study import Arm, read_output, run_augment, train_budget, unit_split  # this script's directory

from ganaug.config import DataConfig
from ganaug.data import load_dataset
from ganaug.evaluate.classifier import SmallCNN, accuracy
from ganaug.files import write_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--resolution", type=int, default=28)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--split-seed", type=int, required=True)
    parser.add_argument("--k", type=int, required=True)
    parser.add_argument("--validation-size", type=int, default=800)
    parser.add_argument("--budgets", default="400,1200")
    parser.add_argument("--out", required=True)
    args, augment_args = parser.parse_known_args()
    augment_args = [a for a in augment_args if a != "--"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # as the study's arms train: the same budget gives the same model

    data = load_dataset(DataConfig(source=args.data, resolution=args.resolution, in_memory=True))
    unit = unit_split(data.labels, args.test_size, args.split_seed, args.k, args.validation_size)
    report = run_augment(data, unit, args.split_seed, args.resolution, out, augment_args)
    folder = read_output(out / "set")
    record = out / "validation.json"
    scores = json.loads(record.read_text()) if record.is_file() else {
        "split_seed": args.split_seed, "k": args.k, "augment_args": augment_args, "recipe": report["decision"]["recipe"],
        "policy": report["estimate"]["policy"], "validation_accuracy": {}}
    validation = (data.images[unit.validation], data.labels[unit.validation])
    budgets = [int(steps) for steps in args.budgets.split(",")]
    arm = Arm("augment", 0, *folder["real"], policy=scores["policy"], budgets=budgets, validation=validation,
              num_classes=len(data.class_names), synthetic=folder["synthetic"],
              synthetic_share=report["settings"]["synthetic_share"])
    for steps in budgets:
        if str(steps) not in scores["validation_accuracy"]:
            model = SmallCNN(data.images.shape[1], len(data.class_names))
            model.load_state_dict(train_budget(arm, steps)["weights"])
            scores["validation_accuracy"][str(steps)] = accuracy(model.eval(), *validation)
            write_atomic(record, json.dumps(scores, indent=1))
        print(json.dumps({"steps": steps, "validation_accuracy": scores["validation_accuracy"][str(steps)]}), flush=True)


if __name__ == "__main__":
    main()
