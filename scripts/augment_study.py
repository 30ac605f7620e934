"""Held-out proof of `ganaug augment` (docs/evaluation.md, "ganaug augment on held-out data").

For every committed split seed and K: a stratified test split (read once per arm), K labelled
images per class from the rest, the remaining train-side images as the unlabelled pool (labels
hidden). `ganaug augment` sees only the labelled images and the pool; then the same classifier is
trained on the test side's behalf by each arm and scored once on the test split:

- classical: the labelled images with the classical policy augment chose on its folds (the strong
  policy, chosen on validation data, not on the test split);
- self-training: that classifier pseudo-labels the pool (tau 0.9), a student trains on both;
- fixmatch: FixMatch-style training on the labelled images and the pool;
- augment: augment's output folder, sampled by its manifest weights, with the same policy;
- augment-without-synthetic: the same folder less its synthetic images (the GAN's own share).

    python scripts/augment_study.py --data mnist5k --resolution 28 --test-size 2000 --k 10 \
        --split-seeds 100,101,102 --out runs/augment_study -- --folds 3 --gan-steps 800

Everything after `--` goes to `ganaug augment`. A finished unit (split, K) is skipped when run again.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ganaug.cli import main as ganaug_main
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
from ganaug.evaluate.study import k_per_class, write_labelled_npz
from ganaug.files import write_atomic

# The split seeds of the held-out study, fixed before any of them was measured (issue 26).
COMMITTED_SPLIT_SEEDS = (100, 101, 102, 103, 104, 105, 106, 107)
PSEUDO_LABEL_CONFIDENCE = 0.9


def split(labels: torch.Tensor, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    train, test = train_test_split(index, test_size=test_size, stratify=labels.numpy(), random_state=seed)
    return np.sort(train), np.sort(test)


def read_output(folder: Path, drop_synthetic: bool = False):
    """augment's folder: (real and pseudo images, labels), (synthetic images, labels), via the manifest."""
    groups = {"real": ([], []), "synthetic": ([], [])}
    with open(folder / "manifest.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            group = "synthetic" if row["source"] == "synthetic" else "real"
            if group == "synthetic" and drop_synthetic:
                continue
            image = np.asarray(Image.open(folder / row["path"]))
            groups[group][0].append(image[None] if image.ndim == 2 else image.transpose(2, 0, 1))
            groups[group][1].append(int(row["label"]))
    return {name: (torch.from_numpy(np.stack(images)), torch.as_tensor(labels)) if images else None
            for name, (images, labels) in groups.items()}


def run_unit(args, data, split_seed: int, k: int, out: Path, augment_args: list[str]) -> dict:
    train, test = split(data.labels, args.test_size, split_seed)
    labelled = k_per_class(data.labels, torch.as_tensor(train), k, split_seed).numpy()
    pool = np.setdiff1d(train, labelled)
    write_labelled_npz(out / "labelled.npz", data.images[labelled], data.labels[labelled], data.class_names)
    write_atomic(out / "unlabelled.npz", lambda f: np.savez(f, images=data.images[pool].permute(0, 2, 3, 1).numpy()))
    start = time.perf_counter()
    code = ganaug_main(["augment", "--labelled", str(out / "labelled.npz"), "--unlabelled", str(out / "unlabelled.npz"),
                        "--out", str(out / "set"), "--seed", str(split_seed), "--no-progress", *augment_args,
                        f"data.resolution={args.resolution}"])
    if code != 0:
        raise SystemExit(f"ganaug augment failed on split {split_seed}, K = {k}")
    augment_seconds = time.perf_counter() - start
    report = json.loads((out / "set" / "report.json").read_text())
    policy = report["estimate"]["policy"]
    n_classes = len(data.class_names)
    real, real_labels = data.images[labelled], data.labels[labelled]
    test_images, test_labels = data.images[test], data.labels[test]
    pool_images = data.images[pool]
    budget = TrainSettings(steps=args.classifier_steps, min_epochs=60).budget(len(labelled))
    share = report["settings"]["synthetic_share"]
    with_synthetic, without_synthetic = read_output(out / "set"), read_output(out / "set", drop_synthetic=True)
    results = {}
    for seed in range(args.seeds):
        def fit(images, labels, synthetic=None, seed=seed):
            data_set = TrainingSet(images, labels, warp_synthetic=True)
            if synthetic is not None:
                data_set = TrainingSet(images, labels, *synthetic, synthetic_fraction=share, warp_synthetic=True)
            return train_classifier(data_set, n_classes, budget, seed=seed, augment=True, policy=policy)

        teacher = fit(real, real_labels)
        confidence, pseudo = predict_proba(teacher, pool_images).max(1)
        sure = confidence >= PSEUDO_LABEL_CONFIDENCE
        arms = {
            "classical": teacher,
            "self-training": fit(torch.cat([real, pool_images[sure]]), torch.cat([real_labels, pseudo[sure]])),
            "fixmatch": train_fixmatch(TrainingSet(real, real_labels), pool_images, n_classes, budget, seed=seed),
            "augment": fit(*with_synthetic["real"], with_synthetic["synthetic"]),
            "augment-without-synthetic": fit(*without_synthetic["real"]),
        }
        for arm, model in arms.items():  # the test split, read once per arm and seed
            results.setdefault(arm, []).append(accuracy(model, test_images, test_labels))
    return {"split_seed": split_seed, "k": k, "policy": policy, "recipe": report["decision"]["recipe"],
            "estimate": report["decision"]["differences"], "accuracy": results,
            "pseudo_labels_right": float((pseudo[sure] == data.labels[pool][sure]).float().mean()),
            "augment_seconds": round(augment_seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--resolution", type=int, default=28)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--k", default="5,10")
    parser.add_argument("--split-seeds", default=",".join(map(str, COMMITTED_SPLIT_SEEDS)))
    parser.add_argument("--seeds", type=int, default=1, help="classifier seeds per arm")
    parser.add_argument("--classifier-steps", type=int, default=400)
    parser.add_argument("--out", required=True)
    args, augment_args = parser.parse_known_args()
    augment_args = [a for a in augment_args if a != "--"]
    torch.set_num_threads(torch.get_num_threads())
    data = load_dataset(DataConfig(source=args.data, resolution=args.resolution, in_memory=True))
    for split_seed in (int(s) for s in args.split_seeds.split(",")):
        for k in (int(k) for k in args.k.split(",")):
            out = Path(args.out) / f"split{split_seed}" / f"k{k}"
            if (out / "results.json").is_file():
                continue
            out.mkdir(parents=True, exist_ok=True)
            result = run_unit(args, data, split_seed, k, out, augment_args)
            write_atomic(out / "results.json", json.dumps(result, indent=1))
            print(json.dumps({arm: round(100 * float(np.mean(v)), 1) for arm, v in result["accuracy"].items()}
                             | {"split": split_seed, "k": k, "recipe": result["recipe"]}), flush=True)


if __name__ == "__main__":
    main()
