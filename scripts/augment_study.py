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

Each arm's training budget (round 3 on): with `--validation-size N --budgets 400,1200`, N images of
the pool are set apart as validation data (their labels read, for this and nothing else; no arm and
not augment sees them), every arm trains once per budget, and the model that scores best on the
validation images (the smaller budget on a tie) is the one scored once on the test split. Without
`--validation-size`, every arm trains the one budget given (round 2: 400 steps).

Each arm's budgets train as jobs of their own, `--arm-jobs` at a time, each in a worker process
with one thread, the longest first (FixMatch's 1,200 steps). Every trained budget is kept in
UNIT/arms/, and each chosen arm with its test accuracy, so a unit stopped in its arms resumes there
without reading the test split again. Where augment's folder holds no synthetic images,
augment-without-synthetic is the augment arm itself (the same images and seed give the same model).

Classifiers nobody here tuned (goal 3): scikit-learn's logistic regression on the raw pixels, trained
on the labelled images alone, on them plus the pool pseudo-labelled by the same model (tau 0.9), on
augment's folder with its manifest weights as sample weights, and on that folder less its synthetic
images. Added to every finished unit's results.json (`--other-classifiers` adds them to units
measured before they existed; the test split is read once per arm there too).
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ganaug.cli import main as ganaug_main
from ganaug.config import DataConfig
from ganaug.data import load_dataset
from ganaug.evaluate.classifier import (
    SmallCNN,
    TrainingSet,
    TrainSettings,
    accuracy,
    predict_proba,
    train_classifier,
    train_fixmatch,
)
from ganaug.evaluate.study import k_per_class, write_labelled_npz
from ganaug.files import write_atomic

# The split seeds of the held-out study, fixed before any of them was measured (issue 26): 100 to
# 107 with round 1, 108 to 112 with round 3's declaration, 113 with round 4's (docs/evaluation.md).
COMMITTED_SPLIT_SEEDS = (100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113)
PSEUDO_LABEL_CONFIDENCE = 0.9


def split(labels: torch.Tensor, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    train, test = train_test_split(index, test_size=test_size, stratify=labels.numpy(), random_state=seed)
    return np.sort(train), np.sort(test)


@dataclass(frozen=True)
class Unit:
    """One unit's disjoint index sets into the data set: labelled, pool (labels hidden), validation
    (labels read only to choose budgets; empty in round 2) and test (read once per arm)."""

    labelled: np.ndarray
    pool: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def unit_split(labels: torch.Tensor, test_size: int, split_seed: int, k: int, validation_size: int = 0) -> Unit:
    from sklearn.model_selection import train_test_split

    train, test = split(labels, test_size, split_seed)
    labelled = k_per_class(labels, torch.as_tensor(train), k, split_seed).numpy()
    pool, validation = np.setdiff1d(train, labelled), np.empty(0, np.int64)
    if validation_size:
        pool, validation = train_test_split(pool, test_size=validation_size, stratify=labels[pool].numpy(),
                                            random_state=split_seed)
    return Unit(np.sort(labelled), np.sort(pool), np.sort(validation), test)


def pick(scores: dict[int, float | None]) -> int:
    """The budget (steps) whose model scored best on the validation images, the smaller on a tie;
    one budget: that one, unscored."""
    if len(scores) == 1:
        return next(iter(scores))
    return max(scores, key=lambda steps: (scores[steps], -steps))


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


def read_weighted(folder: Path, drop_synthetic: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """augment's folder as flat pixels in [0, 1], labels and the manifest's sampling weights."""
    pixels, labels, weights = [], [], []
    with open(folder / "manifest.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if drop_synthetic and row["source"] == "synthetic":
                continue
            pixels.append(np.asarray(Image.open(folder / row["path"]), np.float32).ravel() / 255)
            labels.append(int(row["label"]))
            weights.append(float(row["weight"]))
    return np.stack(pixels), np.asarray(labels), np.asarray(weights)


def other_classifiers(data, unit: Unit, out: Path) -> dict:
    """Held-out accuracy of scikit-learn's logistic regression per arm (its defaults, more iterations)."""
    from sklearn.linear_model import LogisticRegression

    def flat(images: torch.Tensor) -> np.ndarray:
        return images.reshape(len(images), -1).float().div(255).numpy()

    def fit(x, y, weights=None):
        return LogisticRegression(max_iter=2000).fit(x, y, sample_weight=weights)

    pool = flat(data.images[unit.pool])
    x, y = flat(data.images[unit.labelled]), data.labels[unit.labelled].numpy()
    test_x, test_y = flat(data.images[unit.test]), data.labels[unit.test].numpy()
    teacher = fit(x, y)
    probabilities = teacher.predict_proba(pool)
    sure = probabilities.max(1) >= PSEUDO_LABEL_CONFIDENCE
    models = {"labelled": teacher,
              "self-training": fit(np.concatenate([x, pool[sure]]),
                                   np.concatenate([y, teacher.classes_[probabilities[sure].argmax(1)]])),
              "augment": fit(*read_weighted(out / "set", drop_synthetic=False)),
              "augment-without-synthetic": fit(*read_weighted(out / "set", drop_synthetic=True))}
    return {arm: float((model.predict(test_x) == test_y).mean()) for arm, model in models.items()}


@dataclass
class Arm:
    """One arm's training as a worker process gets it: its images and how it trains."""

    name: str
    seed: int
    images: torch.Tensor
    labels: torch.Tensor
    policy: str
    budgets: list[int]
    validation: tuple[torch.Tensor, torch.Tensor]
    num_classes: int
    synthetic: tuple[torch.Tensor, torch.Tensor] | None = None
    synthetic_share: float = 0.0
    unlabelled: torch.Tensor | None = None  # FixMatch's pool; None: a classifier on the images alone

    def cost(self, steps: int) -> int:
        """Relative time of a budget: a FixMatch step also passes 2 x mu x 64 pool images."""
        return steps * (7 if self.unlabelled is not None else 1)


def train_budget(arm: Arm, steps: int) -> dict:
    """The arm's model at one budget, and its validation accuracy where there are budgets to choose
    from (in a worker: one thread)."""
    settings = TrainSettings(steps=steps)
    if arm.unlabelled is not None:
        model = train_fixmatch(TrainingSet(arm.images, arm.labels), arm.unlabelled, arm.num_classes, settings,
                               seed=arm.seed)
    else:
        data = TrainingSet(arm.images, arm.labels, warp_synthetic=True)
        if arm.synthetic is not None:
            data = TrainingSet(arm.images, arm.labels, *arm.synthetic, synthetic_fraction=arm.synthetic_share,
                               warp_synthetic=True)
        model = train_classifier(data, arm.num_classes, settings, seed=arm.seed, augment=True, policy=arm.policy)
    validation = accuracy(model, *arm.validation) if len(arm.budgets) > 1 else None
    return {"weights": model.state_dict(), "validation_accuracy": validation}


def run_augment(data, unit: Unit, split_seed: int, resolution: int, out: Path, augment_args: list[str]) -> dict:
    """`ganaug augment` on the unit's labelled images and pool, into OUT/set (resumable): its report."""
    labelled, pool = unit.labelled, unit.pool
    write_labelled_npz(out / "labelled.npz", data.images[labelled], data.labels[labelled], data.class_names)
    write_atomic(out / "unlabelled.npz", lambda f: np.savez(f, images=data.images[pool].permute(0, 2, 3, 1).numpy()))
    code = ganaug_main(["augment", "--labelled", str(out / "labelled.npz"), "--unlabelled", str(out / "unlabelled.npz"),
                        "--out", str(out / "set"), "--seed", str(split_seed), "--no-progress", *augment_args,
                        f"data.resolution={resolution}"])
    if code != 0:
        raise SystemExit(f"ganaug augment failed on split {split_seed}, K = {len(labelled) // len(data.class_names)}")
    return json.loads((out / "set" / "report.json").read_text())


def run_unit(args, data, split_seed: int, k: int, out: Path, augment_args: list[str]) -> dict:
    unit = unit_split(data.labels, args.test_size, split_seed, k, args.validation_size)
    labelled, pool = unit.labelled, unit.pool
    start = time.perf_counter()
    report = run_augment(data, unit, split_seed, args.resolution, out, augment_args)
    augment_seconds = time.perf_counter() - start
    policy = report["estimate"]["policy"]
    n_classes, channels = len(data.class_names), data.images.shape[1]
    real, real_labels = data.images[labelled], data.labels[labelled]
    pool_images = data.images[pool]
    with_synthetic, without_synthetic = read_output(out / "set"), read_output(out / "set", drop_synthetic=True)
    common = {"policy": policy, "budgets": [int(steps) for steps in args.budgets.split(",")],
              "validation": (data.images[unit.validation], data.labels[unit.validation]), "num_classes": n_classes}

    def arms_of(seed: int) -> list[Arm]:
        arms = [Arm("classical", seed, real, real_labels, **common),
                Arm("fixmatch", seed, real, real_labels, unlabelled=pool_images, **common),
                Arm("augment", seed, *with_synthetic["real"], synthetic=with_synthetic["synthetic"],
                    synthetic_share=report["settings"]["synthetic_share"], **common)]
        if with_synthetic["synthetic"] is not None:  # else the same images and seed: the same model
            arms.append(Arm("augment-without-synthetic", seed, *without_synthetic["real"], **common))
        return arms

    def self_training(classical: SmallCNN, seed: int) -> tuple[Arm, torch.Tensor, torch.Tensor]:
        confidence, pseudo = predict_proba(classical, pool_images).max(1)
        sure = confidence >= PSEUDO_LABEL_CONFIDENCE
        arm = Arm("self-training", seed, torch.cat([real, pool_images[sure]]), torch.cat([real_labels, pseudo[sure]]),
                  **common)
        return arm, pseudo, sure

    def model_of(result: dict) -> SmallCNN:
        model = SmallCNN(channels, n_classes)
        model.load_state_dict(result["weights"])
        return model.eval()

    def file(arm: Arm, steps: int | None = None) -> Path:
        return out / "arms" / (f"{arm.name}-seed{arm.seed}" + (f"-steps{steps}" if steps else "") + ".pt")

    def save(path: Path, result: dict) -> None:
        path.parent.mkdir(exist_ok=True)
        write_atomic(path, lambda f: torch.save(result, f))

    finished, trained, right = {}, {}, []
    with ProcessPoolExecutor(args.arm_jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as workers:
        running = {}

        def start(arms: list[Arm]) -> None:
            """Each arm's budgets not trained yet, the longest first; what an earlier run kept is reused."""
            jobs = []
            for arm in arms:
                if file(arm).is_file():  # chosen and scored by an earlier run of this unit
                    done(arm, torch.load(file(arm), weights_only=True))
                    continue
                trained[arm.name, arm.seed] = {}
                for steps in arm.budgets:
                    if file(arm, steps).is_file():
                        trained[arm.name, arm.seed][steps] = torch.load(file(arm, steps), weights_only=True)
                    else:
                        jobs.append((arm, steps))
                choose_if_trained(arm)
            for arm, steps in sorted(jobs, key=lambda job: (job[0].name != "classical", -job[0].cost(job[1]))):
                running[workers.submit(train_budget, arm, steps)] = arm, steps

        def choose_if_trained(arm: Arm) -> None:
            """Every budget trained: the one validation picks is scored on the test split, once, and
            kept on disk with its test accuracy, so that a rerun reads the test split no more."""
            budgets = trained[arm.name, arm.seed]
            if len(budgets) < len(arm.budgets):
                return
            scores = {steps: result["validation_accuracy"] for steps, result in budgets.items()}
            steps = pick(scores)
            model = model_of(budgets[steps])
            result = {"weights": budgets[steps]["weights"], "steps": steps,
                      "validation_accuracy": scores if len(scores) > 1 else {},
                      "test_accuracy": accuracy(model, data.images[unit.test], data.labels[unit.test])}
            save(file(arm), result)
            done(arm, result)

        def done(arm: Arm, result: dict) -> None:
            finished[arm.name, arm.seed] = result
            if arm.name == "classical":
                student, pseudo, sure = self_training(model_of(result), arm.seed)
                right.append(float((pseudo[sure] == data.labels[pool][sure]).float().mean()))
                start([student])

        start([arm for seed in range(args.seeds) for arm in arms_of(seed)])
        while running:
            complete, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in complete:
                arm, steps = running.pop(future)
                trained[arm.name, arm.seed][steps] = future.result()
                save(file(arm, steps), future.result())
                choose_if_trained(arm)
    for seed in range(args.seeds):
        if ("augment-without-synthetic", seed) not in finished:
            finished["augment-without-synthetic", seed] = finished["augment", seed]
    results, chosen, scores = {}, {}, {}
    for name in ARMS:
        for seed in range(args.seeds):
            result = finished[name, seed]
            results.setdefault(name, []).append(result["test_accuracy"])
            chosen.setdefault(name, []).append(result["steps"])
            scores.setdefault(name, []).append(result["validation_accuracy"])
    return {"split_seed": split_seed, "k": k, "policy": policy, "recipe": report["decision"]["recipe"],
            "estimate": report["decision"]["differences"], "accuracy": results,
            "budgets": chosen, "validation_accuracy": scores, "validation_size": len(unit.validation),
            "logistic_regression": other_classifiers(data, unit, out),
            "pseudo_labels_right": float(np.mean(right)),
            "augment_seconds": round(augment_seconds, 1)}


ARMS = ("classical", "self-training", "fixmatch", "augment", "augment-without-synthetic")
COMPARISONS = (("augment", "classical"), ("augment", "self-training"), ("augment", "fixmatch"),
               ("augment", "augment-without-synthetic"), ("self-training", "classical"),
               ("fixmatch", "classical"))


def interval(values: list[float]) -> str:
    """mean [95% t-interval] in points; units (split, K) are independent draws of the data."""
    from scipy import stats

    values = np.asarray(values, np.float64) * 100
    if len(values) < 2:
        return f"{values.mean():+.1f} (one unit)"
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return f"{values.mean():+.1f} [{values.mean() - half:+.1f}, {values.mean() + half:+.1f}]"


def summary(out: Path) -> str:
    """Markdown tables of every finished unit under `out`, pooled per K (all units measured)."""
    results = [json.loads(p.read_text()) for p in sorted(out.glob("split*/k*/results.json"))]
    lines = []
    for k in sorted({r["k"] for r in results}):
        units = [r for r in results if r["k"] == k]
        lines += [f"K = {k}: {len(units)} unit(s), split seeds {', '.join(str(r['split_seed']) for r in units)}", "",
                  "| split | policy | augment's recipe | " + " | ".join(ARMS) + " |",
                  "|---" * (len(ARMS) + 3) + "|"]
        for r in units:
            accuracy = {arm: float(np.mean(r["accuracy"][arm])) for arm in ARMS}
            lines.append(f"| {r['split_seed']} | {r['policy']} | {r['recipe']} | "
                         + " | ".join(f"{100 * accuracy[arm]:.1f}" for arm in ARMS) + " |")
        lines += ["", "| held-out difference (points) | mean [95% interval] |", "|---|---|"]
        for better, worse in COMPARISONS:
            values = [float(np.mean(r["accuracy"][better])) - float(np.mean(r["accuracy"][worse])) for r in units]
            lines.append(f"| {better} - {worse} | {interval(values)} |")
        chosen = [r for r in units if r.get("validation_size")]
        if chosen:
            lines += ["", "| budget chosen on validation (steps) | " + " | ".join(ARMS) + " |",
                      "|---" * (len(ARMS) + 1) + "|"]
            for r in chosen:
                lines.append(f"| split {r['split_seed']} | "
                             + " | ".join("/".join(map(str, r["budgets"][arm])) for arm in ARMS) + " |")
        regression = [r for r in units if "logistic_regression" in r]
        if regression:
            lines += ["", "| logistic regression | " + " | ".join(regression[0]["logistic_regression"]) + " |",
                      "|---" * (len(regression[0]["logistic_regression"]) + 1) + "|"]
            for r in regression:
                lines.append(f"| split {r['split_seed']} | "
                             + " | ".join(f"{100 * v:.1f}" for v in r["logistic_regression"].values()) + " |")
        agree = [(r["estimate"]["recipe"]["mean"] > 0) == (np.mean(r["accuracy"]["augment"])
                                                             > np.mean(r["accuracy"]["classical"]))
                 for r in units if "recipe" in r["estimate"]]
        lines += ["", f"augment's estimate of its recipe against classical agrees in sign with the held-out "
                      f"difference in {sum(agree)} of {len(agree)} unit(s) where its recipe was not classical.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--resolution", type=int, default=28)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--k", default="5,10")
    parser.add_argument("--split-seeds", default=",".join(map(str, COMMITTED_SPLIT_SEEDS)))
    parser.add_argument("--seeds", type=int, default=1, help="classifier seeds per arm")
    parser.add_argument("--budgets", default="400", help="training steps to choose from per arm (comma-separated)")
    parser.add_argument("--arm-jobs", type=int, default=os.cpu_count() or 1,
                        help="(arm, budget) jobs trained at a time, each in a worker process with one thread")
    parser.add_argument("--validation-size", type=int, default=0,
                        help="pool images set apart, labels read, to choose each arm's budget")
    parser.add_argument("--out", required=True)
    parser.add_argument("--summary", action="store_true", help="only print the tables of the finished units")
    parser.add_argument("--other-classifiers", action="store_true",
                        help="only add scikit-learn's arms to finished units that lack them")
    args, augment_args = parser.parse_known_args()
    if args.summary:
        print(summary(Path(args.out)))
        return
    augment_args = [a for a in augment_args if a != "--"]
    torch.set_num_threads(torch.get_num_threads())
    data = load_dataset(DataConfig(source=args.data, resolution=args.resolution, in_memory=True))
    for split_seed in (int(s) for s in args.split_seeds.split(",")):
        for k in (int(k) for k in args.k.split(",")):
            out = Path(args.out) / f"split{split_seed}" / f"k{k}"
            if args.other_classifiers:
                if (out / "results.json").is_file():
                    result = json.loads((out / "results.json").read_text())
                    if "logistic_regression" not in result:
                        unit = unit_split(data.labels, args.test_size, split_seed, k, args.validation_size)
                        result["logistic_regression"] = other_classifiers(data, unit, out)
                        write_atomic(out / "results.json", json.dumps(result, indent=1))
                    print(json.dumps({"split": split_seed, "k": k} | result["logistic_regression"]), flush=True)
                continue
            if (out / "results.json").is_file():
                continue
            out.mkdir(parents=True, exist_ok=True)
            result = run_unit(args, data, split_seed, k, out, augment_args)
            write_atomic(out / "results.json", json.dumps(result, indent=1))
            print(json.dumps({arm: round(100 * float(np.mean(v)), 1) for arm, v in result["accuracy"].items()}
                             | {"split": split_seed, "k": k, "recipe": result["recipe"]}), flush=True)


if __name__ == "__main__":
    main()
