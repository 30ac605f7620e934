#!/usr/bin/env python3
"""Does the gain hold for classifiers we did not write? scikit-learn's, on a finished study's sets.

    python scripts/other_classifiers.py STUDY_OUT [--k 5] [--per-class 300] [--warps 10] [--shares]
                                        [--unlabelled]

STUDY_OUT is the --out of a finished `ganaug evaluate study` (with --split-seeds: each OUT/split<S>/
is read). For every (split, seed) unit, the same data as the study's arms, judged by two scikit-learn
classifiers on raw pixels, a linear one (LogisticRegression) and a kernel one (SVC with an RBF
kernel), both at their defaults:

    real                      the K labelled images per class (OUT/data/k<K>.npz)
    real+classical            those and --warps random affine warps of each (the study's warp)
    real+synthetic            those and the first --per-class images per class of the seed's
                              synthetic set, filtered as the study's arms were (what `ganaug
                              sample --filter` wrote; where it kept nothing, the real images
                              alone, as in the study)
    real+classical+synthetic  the warps of the real images and the synthetic images unwarped

and with --unlabelled (the train split's images outside the K subset, as the study's --unlabelled):

    self-training             real+classical and the unlabelled images that the real+classical
                              classifier gives a class with probability >= 0.9, with that class
    synthetic-taught          the same, the real+classical+synthetic classifier labelling
      self-training

Each arm is one training set of all its images alike, as a user would fit one; with --shares, real
and added images carry equal total weight (the study's 50/50 batches) and every arm the total weight
of the real images alone, so that the regularisation weighs the same against the data in every arm.
Accuracy is on the study's held-out split. Prints each classifier's paired differences over the
units, mean and 95% t-interval; docs/evaluation.md quotes a run.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("real", "real+classical", "real+synthetic", "real+classical+synthetic")
COMPARISONS = (("real+synthetic", "real"), ("real+classical", "real"),
               ("real+classical+synthetic", "real+classical"), ("real+classical+synthetic", "real"))
# student arm -> the arm whose classifier pseudo-labels the unlabelled images for it
SELF_TRAINING = {"self-training": "real+classical", "synthetic-taught self-training": "real+classical+synthetic"}
UNLABELLED_COMPARISONS = (("self-training", "real+classical"), ("synthetic-taught self-training", "self-training"))
PSEUDO_LABEL_CONFIDENCE = 0.9  # the study's default


def classifiers():
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    return {"logistic regression": lambda: LogisticRegression(max_iter=2000), "RBF SVM": lambda: SVC()}


def pseudo_labels(model, x, y, w, unlabelled):
    """(images, labels) of the unlabelled images that the fitted model gives a class with probability
    >= PSEUDO_LABEL_CONFIDENCE. A model without probabilities (the SVC) is calibrated on its own
    training set (scikit-learn's CalibratedClassifierCV, sigmoid, on internal folds)."""
    from sklearn.base import clone
    from sklearn.calibration import CalibratedClassifierCV

    if not hasattr(model, "predict_proba"):
        model = CalibratedClassifierCV(clone(model), ensemble=False).fit(x, y, sample_weight=w)
    probabilities = model.predict_proba(unlabelled)
    sure = probabilities.max(1) >= PSEUDO_LABEL_CONFIDENCE
    return unlabelled[sure], model.classes_[probabilities[sure].argmax(1)]


def pixels(images_u8) -> np.ndarray:
    return images_u8.reshape(len(images_u8), -1).float().div(255).numpy()


def training_set(parts, n_real: int, shares: bool):
    """(features, labels, sample weights) of the (images, labels) parts fitted as one set; a part may
    also be (pixels, labels) already as numpy arrays."""
    x = np.concatenate([images if isinstance(images, np.ndarray) else pixels(images) for images, _ in parts])
    y = np.concatenate([np.asarray(labels) for _, labels in parts])
    if not shares:  # what a user does: one training set, every image alike
        return x, y, np.ones(len(y))
    # Each part's total weight equal (the study's fixed shares of a batch), and every arm's total that
    # of the real images alone: the classifiers' regularisation (C) then weighs the same against the
    # data in every arm.
    w = np.concatenate([np.full(len(labels), n_real / len(parts) / len(labels)) for _, labels in parts])
    return x, y, w


def student_set(classical, n_real: int, shares: bool, pseudo):
    """A self-training student's set: the real images with their warps, and the pseudo-labelled ones."""
    return training_set([classical, pseudo], n_real, shares)


def units(out: Path, k: int, per_class: int, warps: int, shares: bool):
    """(split, seed, {arm: (features, labels, weights)}, test features, test labels, unlabelled
    features, a function of pseudo-labelled (features, labels) -> a student's training set) of each unit."""
    import torch

    from ganaug.config import config_from_dict
    from ganaug.data import load_dataset
    from ganaug.evaluate.policies import random_affine
    from ganaug.evaluate.study import k_per_class, read_synthetic, stratified_split

    folders = sorted(out.glob("split*/state.json")) or [out / "state.json"]
    for state_path in folders:
        folder = state_path.parent
        state = json.loads(state_path.read_text())
        settings = state["settings"]
        data = load_dataset(config_from_dict(settings["gan_config"]).data)
        train, test = stratified_split(data.labels, settings["test_fraction"], settings["split_seed"])
        labelled = set(k_per_class(data.labels, train, k, settings["split_seed"]).tolist())
        unlabelled = pixels(data.images[[i for i in train.tolist() if i not in labelled]])
        with np.load(folder / "data" / f"k{k}.npz") as npz:
            real = torch.from_numpy(npz["images"]).permute(0, 3, 1, 2).contiguous()
            real_y = torch.from_numpy(npz["labels"]).long()
        seeds = sorted({int(key.rsplit("seed", 1)[1]) for key in state["units"] if key.startswith(f"result/k{k}/")})
        for seed in seeds:
            filtered = "_filtered" if settings["filter_confidence"] > 0 else ""  # the set the study's arms used
            synthetic, synthetic_y = read_synthetic(folder / f"gan_k{k}" / f"samples_seed{seed}{filtered}")
            keep = torch.cat([torch.nonzero(synthetic_y == c).flatten()[:per_class] for c in real_y.unique()])
            synthetic, synthetic_y = synthetic[keep], synthetic_y[keep]
            if not len(synthetic_y):  # the study's arms then trained on real images only; so do these
                print(f"{folder}: the filter kept no synthetic image of seed {seed}; real images only", file=sys.stderr)
            generator = torch.Generator().manual_seed(seed)
            warped = (random_affine(real.repeat(warps, 1, 1, 1).float().div(255), generator) * 255).round()
            warped, warped_y = warped.clamp(0, 255).to(torch.uint8), real_y.repeat(warps)

            classical = (torch.cat([real, warped]), torch.cat([real_y, warped_y]))
            added = [(synthetic, synthetic_y)] if len(synthetic_y) else []
            arms = {"real": training_set([(real, real_y)], len(real), shares),
                    "real+classical": training_set([classical], len(real), shares),
                    "real+synthetic": training_set([(real, real_y), *added], len(real), shares),
                    "real+classical+synthetic": training_set([classical, *added], len(real), shares)}
            student = functools.partial(student_set, classical, len(real), shares)
            yield (settings["split_seed"], seed, arms, pixels(data.images[test]), data.labels[test].numpy(),
                   unlabelled, student)


def interval(values: list[float]) -> str:
    from scipy import stats

    x = np.asarray(values)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else math.nan
    return f"{100 * x.mean():+.1f} [{100 * (x.mean() - half):+.1f}, {100 * (x.mean() + half):+.1f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--warps", type=int, default=10)
    parser.add_argument("--shares", action="store_true", help="weight real and added images 50/50 (see above)")
    parser.add_argument("--unlabelled", action="store_true", help="also the two self-training arms (see above)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))

    arm_names = ARMS + (tuple(SELF_TRAINING) if args.unlabelled else ())
    comparisons = COMPARISONS + (UNLABELLED_COMPARISONS if args.unlabelled else ())
    accuracy = {name: {arm: [] for arm in arm_names} for name in classifiers()}
    for split, seed, arms, test_x, test_y, unlabelled, student in units(args.out, args.k, args.per_class,
                                                                         args.warps, args.shares):
        for name, make in classifiers().items():
            fitted = {arm: make().fit(x, y, sample_weight=w) for arm, (x, y, w) in arms.items()}
            for arm, teacher in SELF_TRAINING.items() if args.unlabelled else ():
                x, y, w = student(pseudo_labels(fitted[teacher], *arms[teacher], unlabelled))
                fitted[arm] = make().fit(x, y, sample_weight=w)
            for arm, model in fitted.items():
                accuracy[name][arm].append(float((model.predict(test_x) == test_y).mean()))
            print(f"split {split} seed {seed} {name}: " + ", ".join(
                f"{arm} {100 * accuracy[name][arm][-1]:.1f}%" for arm in arm_names), flush=True)
    for name, by_arm in accuracy.items():
        print(f"\n{name} (K = {args.k}, {len(by_arm['real'])} units): real {100 * np.mean(by_arm['real']):.1f}%")
        for arm, baseline in comparisons:
            print(f"  {arm} vs {baseline}: {interval(np.subtract(by_arm[arm], by_arm[baseline]).tolist())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
