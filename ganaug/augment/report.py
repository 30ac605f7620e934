"""report.json and report.md of `ganaug augment`: what each ingredient was worth on the user's labels,
what the output holds, and how to train on it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ganaug.augment.estimate import Difference, sentence
from ganaug.augment.settings import AugmentSettings
from ganaug.files import write_atomic

INGREDIENTS = {"pseudo": "pseudo-labels of the unlabelled images by a FixMatch-trained teacher",
               "synthetic": "synthetic images",
               "recipe": "the recommended set against the labelled images with classical augmentation"}

HOW_TO_TRAIN = """\
```python
import csv, torch, torchvision
from pathlib import Path
rows = list(csv.DictReader(open("{out}/manifest.csv")))
data = torchvision.datasets.ImageFolder("{out}", transform=...)  # your transforms, with the {policy} policy
weight = {{row["path"]: float(row["weight"]) for row in rows}}
weights = [weight[str(Path(p).relative_to("{out}"))] for p, _ in data.samples]
sampler = torch.utils.data.WeightedRandomSampler(weights, num_samples=len(weights))
loader = torch.utils.data.DataLoader(data, batch_size=64, sampler=sampler)
```"""


def build_report(settings: AugmentSettings, estimate: dict, prepared: dict, rows: list[dict],
                 class_names: list[str], n_unlabelled: int) -> dict:
    decision = prepared["decision"]
    counts = Counter(row["source"] for row in rows)
    per_class = {name: Counter() for name in class_names}
    for row in rows:
        per_class[row["class_name"]][row["source"]] += 1
    sentences = [sentence(Difference(**d), INGREDIENTS[name], decision["rules"][name])
                 for name, d in decision["differences"].items() if name != "recipe"]
    if "recipe" in decision["differences"]:
        recipe = decision["differences"]["recipe"]
        sentences.append(f"The recommended set ({decision['recipe']}) against the labelled images with classical "
                         f"augmentation: {Difference(**recipe).interval_text()}.")
    else:
        sentences.append("The output is the labelled images alone: train on them with the policy below.")
    if settings.model and settings.uses_generator:
        sentences.append(f"The generator was given (--model {settings.model}), not trained per fold: if it saw the "
                         "held-out labelled images, the synthetic images' estimate is optimistic.")
    return {
        "labelled": {"source": settings.labelled, "images": counts["real"], "classes": class_names},
        "unlabelled": {"source": settings.unlabelled, "images": n_unlabelled} if settings.unlabelled else None,
        "estimate": {"folds": estimate["folds"], "seeds_per_fold": settings.seeds, "policy": estimate["policy"],
                     "policy_accuracy": estimate["policy_accuracy"], "accuracy_per_fold": estimate["per_fold"],
                     "interval": "95%, corrected resampled t (Nadeau and Bengio 2003)"},
        "decision": decision,
        "sentences": sentences,
        "output": {"images": dict(counts), "per_class": {name: dict(c) for name, c in per_class.items()},
                   "synthetic_share": settings.synthetic_share if counts["synthetic"] else 0.0,
                   "teacher": prepared["teacher"], "teacher_sha256": prepared["teacher_sha256"],
                   "synthetic": prepared["synthetic"]},
        "settings": {k: v for k, v in settings.fingerprint().items() if k != "gan_config"},
    }


def markdown(report: dict, out: Path) -> str:
    estimate, output = report["estimate"], report["output"]
    lines = [f"# ganaug augment: {out}", "", *[f"- {s}" for s in report["sentences"]], "",
             "## What DIR holds", "", "| class | real | pseudo-labelled | synthetic |", "|---|---|---|---|"]
    for name, counts in output["per_class"].items():
        lines.append(f"| {name} | {counts.get('real', 0)} | {counts.get('pseudo', 0)} | {counts.get('synthetic', 0)} |")
    lines += ["", f"Train with the **{estimate['policy']}** classical augmentation on every image, sampling by the "
                  "manifest's `weight` column" + (f" (the synthetic images are {output['synthetic_share']:.0%} of "
                                                  "each batch, as measured)" if output["images"].get("synthetic")
                                                  else " (all 1 here: plain uniform sampling is the same)") + ":",
              "", HOW_TO_TRAIN.format(out=out, policy=estimate["policy"]), "",
              "## The estimate", "",
              f"{estimate['folds']} stratified folds of the labelled images, {estimate['seeds_per_fold']} classifier "
              f"seed(s) per fold; the interval is the {estimate['interval']}.", "",
              "| arm | held-out accuracy per fold (%) | mean |", "|---|---|---|"]
    for arm, values in estimate["accuracy_per_fold"].items():
        lines.append(f"| {arm} | {', '.join(f'{100 * v:.1f}' for v in values)} | "
                     f"{100 * sum(values) / len(values):.1f} |")
    lines += ["", "Classical augmentation policies tried (mean held-out accuracy, labelled images only): " +
              ", ".join(f"{p} {100 * v:.1f}%" for p, v in estimate["policy_accuracy"].items()) +
              f"; chosen: {estimate['policy']}.", ""]
    return "\n".join(lines)


def write_report(out: Path, report: dict) -> None:
    write_atomic(out / "report.json", json.dumps(report, indent=1))
    write_atomic(out / "report.md", markdown(report, out))
