"""Validation check for the next round of the held-out augment study: do the arms gain alike from a
longer training budget? (docs/evaluation.md, "What was tried".)

On one split's train side only (its test images are never read): K labelled images per class, a
validation set carved from the unlabelled pool (its labels read, its images removed from the pool),
the rest as the pool. At each step budget it trains, with the classical policy given:
classical (the labelled images), fixmatch (labelled + pool), and a student of a FixMatch teacher's
pseudo-labels (tau 0.9, the set augment writes) for a teacher of each budget.

    python scripts/budget_check.py --split-seed 100 --k 5 --steps 400,1200 --out runs/budget_check.json

Run again with the same --out, it keeps the arms already measured there and measures the rest.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ganaug.config import DataConfig
from ganaug.data import load_dataset
from ganaug.evaluate.classifier import (
    TrainingSet,
    TrainSettings,
    accuracy,
    predict_proba,
    train_classifier,
    train_fixmatch,
)
from ganaug.evaluate.study import k_per_class
from ganaug.files import write_atomic

PSEUDO_LABEL_CONFIDENCE = 0.9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--resolution", type=int, default=28)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--split-seed", type=int, default=100)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--validation-size", type=int, default=800)
    parser.add_argument("--steps", default="400,1200")
    parser.add_argument("--policy", default="affine")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from augment_study import split  # this directory is on the path of a script run from it
    from sklearn.model_selection import train_test_split

    data = load_dataset(DataConfig(source=args.data, resolution=args.resolution, in_memory=True))
    train, _test = split(data.labels, args.test_size, args.split_seed)  # the study's split; test unread
    labelled = k_per_class(data.labels, torch.as_tensor(train), args.k, args.split_seed).numpy()
    rest = np.setdiff1d(train, labelled)
    pool, validation = train_test_split(rest, test_size=args.validation_size, stratify=data.labels[rest].numpy(),
                                        random_state=args.split_seed)
    real, real_labels = data.images[labelled], data.labels[labelled]
    pool_images, pool_labels = data.images[np.sort(pool)], data.labels[np.sort(pool)]
    val_images, val_labels = data.images[np.sort(validation)], data.labels[np.sort(validation)]
    classes = len(data.class_names)
    results: dict = {"split_seed": args.split_seed, "k": args.k, "policy": args.policy, "pool": len(pool),
                     "validation": len(validation), "arms": {}}
    if Path(args.out).is_file():  # resume: the same split and policy, measured arms kept
        earlier = json.loads(Path(args.out).read_text())
        if any(earlier.get(key) != value for key, value in results.items() if key != "arms"):
            raise SystemExit(f"{args.out} holds a check of another split or policy; give another --out")
        results["arms"] = earlier["arms"]

    def record(name: str, model, start: float, **extra) -> None:
        results["arms"][name] = {"validation_accuracy": accuracy(model, val_images, val_labels),
                                 "seconds": round(time.perf_counter() - start, 1), **extra}
        print(json.dumps({name: results["arms"][name]}), flush=True)
        write_atomic(args.out, json.dumps(results, indent=1))

    budgets = [int(s) for s in args.steps.split(",")]
    for steps in budgets:
        settings = TrainSettings(steps=steps)
        start = time.perf_counter()
        if f"classical@{steps}" not in results["arms"]:
            classical = train_classifier(TrainingSet(real, real_labels, warp_synthetic=True), classes, settings,
                                         seed=0, augment=True, policy=args.policy)
            record(f"classical@{steps}", classical, start)
        students = [f"student@{s} of fixmatch@{steps}" for s in budgets]
        if all(name in results["arms"] for name in [f"fixmatch@{steps}", *students]):
            continue
        start = time.perf_counter()
        teacher = train_fixmatch(TrainingSet(real, real_labels), pool_images, classes, settings, seed=0)
        record(f"fixmatch@{steps}", teacher, start)
        confidence, pseudo = predict_proba(teacher, pool_images).max(1)
        sure = confidence >= PSEUDO_LABEL_CONFIDENCE
        images, labels = torch.cat([real, pool_images[sure]]), torch.cat([real_labels, pseudo[sure]])
        for student_steps, name in zip(budgets, students):
            if name in results["arms"]:
                continue
            start = time.perf_counter()
            student = train_classifier(TrainingSet(images, labels, warp_synthetic=True), classes,
                                       TrainSettings(steps=student_steps), seed=0, augment=True, policy=args.policy)
            record(name, student, start, kept=int(sure.sum()),
                   right=float((pseudo[sure] == pool_labels[sure]).float().mean()))


if __name__ == "__main__":
    main()
