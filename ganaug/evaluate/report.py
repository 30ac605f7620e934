"""The study's and the metrics' outputs: report.json, report.md, a text table and PNG figures.

Accuracies are summarised as the mean over seeds with a 95% t-interval. Gains of the synthetic
arms are paired differences (the same seed trains every arm from the same initialisation and batch
order), which separates the effect of the data from seed-to-seed noise. The verdict is mechanical:
an interval above zero is a gain, below zero a loss, straddling zero no measurable difference (and
fewer than three seeds no verdict at all).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ganaug.files import write_atomic

ARM_LABELS = {
    "real": "(a) real",
    "real+classical": "(b) real+classical",
    "real+synthetic": "(c) real+synthetic",
    "real+classical+synthetic": "(d) real+classical+synthetic",
    "synthetic": "(e) synthetic only",
    "self-training": "(f) self-training",
    "real+classical+semi-synthetic": "(g) real+classical+semi-synthetic",
    "self-training+semi-synthetic": "(h) self-training+semi-synthetic",
    "synthetic-taught self-training": "(i) synthetic-taught self-training",
}
COMPARISONS = (("real+synthetic", "real"), ("real+classical+synthetic", "real+classical"),
               ("real+classical+synthetic", "real"), ("synthetic", "real"),
               ("self-training", "real+classical"), ("real+classical+semi-synthetic", "self-training"),
               ("self-training+semi-synthetic", "self-training"),
               ("synthetic-taught self-training", "self-training"))


def mean_interval(values: list[float], confidence: float = 0.95) -> dict:
    """Mean and two-sided t-interval over seeds (no interval from a single seed)."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "ci95": [math.nan, math.nan], "half_width": math.nan, "n": len(x)}
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return {"mean": mean, "ci95": [mean - half, mean + half], "half_width": half, "n": len(x)}


MIN_SEEDS_FOR_VERDICT = 3  # two seeds can agree exactly (accuracies are multiples of 1/n_test): a zero-width "interval"


def verdict(interval: dict) -> str:
    low, high = interval["ci95"]
    if interval["n"] < MIN_SEEDS_FOR_VERDICT:
        return f"{interval['n']} seed(s): too few for a verdict"
    if low > 0:
        return "gain"
    if high < 0:
        return "loss"
    return "no measurable difference"


def summarise(results: dict) -> dict:
    """Add per-arm intervals and paired gains to the study's results."""
    accuracy, gains = {}, {}
    for k, arms in results["accuracy_by_seed"].items():
        accuracy[k] = {arm: {**mean_interval(values), "values": values} for arm, values in arms.items()}
        gains[k] = {}
        for arm, baseline in COMPARISONS:
            if arm not in arms or baseline not in arms:
                continue
            diff = mean_interval([a - b for a, b in zip(arms[arm], arms[baseline], strict=True)])
            gains[k][f"{arm} vs {baseline}"] = {**diff, "verdict": verdict(diff)}
    return {**results, "accuracy": accuracy, "gains": gains,
            "recommendation": {k: recommend(arms) for k, arms in results["accuracy_by_seed"].items()}}


# Arm (e) measures the generator (CAS); nobody would train on synthetic images alone when they have real ones.
NOT_A_RECIPE = ("synthetic",)


def recommend(accuracy_by_arm: dict[str, list[float]]) -> dict:
    """What a user with this many labels should train on: the arm of the highest mean held-out accuracy,
    and the arms not measurably worse than it (their paired difference to it has an interval reaching
    zero), in the study's arm order (the simpler recipes first). The GAN's images are worth making at this
    K only where no arm without them is as good as the best."""
    from ganaug.evaluate.study import uses_synthetic

    recipes = {arm: values for arm, values in accuracy_by_arm.items() if arm not in NOT_A_RECIPE}
    best = max(recipes, key=lambda arm: np.mean(recipes[arm]))
    as_good = []
    for arm, values in recipes.items():
        if arm == best:
            continue
        diff = mean_interval([a - b for a, b in zip(values, recipes[best], strict=True)])
        if verdict(diff) != "loss":  # too few seeds for a verdict: cannot be told apart either
            as_good.append({"arm": arm, **diff})
    without_synthetic = [arm for arm in [best, *(a["arm"] for a in as_good)] if not uses_synthetic(arm)]
    return {"best": best, "mean": float(np.mean(recipes[best])), "as_good": as_good,
            "synthetic_needed": not without_synthetic, "verdict_possible": len(recipes[best]) >= MIN_SEEDS_FOR_VERDICT,
            "best_without_synthetic": without_synthetic[0] if without_synthetic else None}


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: Path, values: dict) -> None:
    write_atomic(path, json.dumps(_json_safe(values), indent=2))


# ------------------------------------------------------------------------------ text


def _pct(summary: dict) -> str:
    mean, half = 100 * summary["mean"], 100 * summary["half_width"]
    return f"{mean:.1f}" if math.isnan(half) else f"{mean:.1f} ± {half:.1f}"


def accuracy_table(summary: dict, markdown: bool = False) -> str:
    """Held-out accuracy (%) per K and arm: mean ± 95% half-width over seeds ('-': not run at that K)."""
    arms = [a for a in ARM_LABELS if any(a in by_arm for by_arm in summary["accuracy"].values())]
    header = ["K", *(ARM_LABELS[a] for a in arms)]
    rows = [[k, *(_pct(summary["accuracy"][k][a]) if a in summary["accuracy"][k] else "-" for a in arms)]
            for k in summary["accuracy"]]
    return _table(header, rows, markdown)


def combine(summaries: list[dict]) -> dict:
    """Several studies of other splits (--split-seeds) as one: each (split, seed) a paired unit."""
    first = summaries[0]
    accuracy_by_seed = {}
    for k, arms in first["accuracy_by_seed"].items():
        accuracy_by_seed[k] = {arm: [value for s in summaries for value in s["accuracy_by_seed"][k][arm]]
                               for arm in arms}
    protocol = {**first["protocol"], "split_seeds": [s["protocol"]["split_seed"] for s in summaries],
                "seeds_per_split": first["protocol"]["seeds"]}
    gan = {f"{name} (split {s['protocol']['split_seed']})": entry for s in summaries for name, entry in s["gan"].items()}
    return summarise({"protocol": protocol, "gan": gan, "accuracy_by_seed": accuracy_by_seed,
                      "by_split": [{"split_seed": s["protocol"]["split_seed"], "gains": s["gains"]}
                                   for s in summaries]})


def gains_table(summary: dict, markdown: bool = False) -> str:
    header = ["K", "comparison", "difference (points)", "95% interval", "verdict"]
    rows = []
    for k, comparisons in summary["gains"].items():
        for name, g in comparisons.items():
            low, high = g["ci95"]
            interval = "-" if math.isnan(low) else f"[{100 * low:+.1f}, {100 * high:+.1f}]"
            rows.append([k, name, f"{100 * g['mean']:+.1f}", interval, g["verdict"]])
    return _table(header, rows, markdown)


def recommendation_table(summary: dict, markdown: bool = False) -> str:
    """Per K, the recipe to train on, those as good, and whether the GAN's images are worth making."""
    header = ["K", "train on", "held-out accuracy (%)", "as good (no measurable difference)", "synthetic images"]
    rows = []
    for k, advice in summary["recommendation"].items():
        best = advice["best"]
        if not advice["verdict_possible"]:
            synthetic = f"too few seeds (< {MIN_SEEDS_FOR_VERDICT}) to tell"
        elif advice["synthetic_needed"]:
            synthetic = "worth making: no recipe without them is as good"
        elif advice["best_without_synthetic"] != best:
            synthetic = f"optional: {ARM_LABELS[advice['best_without_synthetic']]} is as good without them"
        else:
            synthetic = "not worth making: the best recipe uses none"
        rows.append([k, ARM_LABELS[best], f"{100 * advice['mean']:.1f}",
                     ", ".join(ARM_LABELS[a["arm"]] for a in advice["as_good"]) or "-", synthetic])
    return _table(header, rows, markdown)


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths)),
                      *(fmt.format(*row) for row in rows)])


def _number(value, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def quality_table(gans: dict, markdown: bool = True) -> str:
    header = ["K", "GAN steps", "FD", "KID", "precision", "recall", "variety (pixels)", "class agreement",
              "NN distance / held-out", "near copies"]
    rows = []
    for k, gan in gans.items():
        m = gan.get("metrics") or {}
        agreement = m.get("class_agreement")
        mean_agreement = (float(np.mean([v for v in agreement.values() if v is not None]))
                          if agreement else None)
        memo = m.get("memorisation", {})
        rows.append([k, str(gan.get("steps", "-")), _number(m.get("fd"), 2), _number(m.get("kid_mean"), 4),
                     _number(m.get("precision"), 2), _number(m.get("recall"), 2),
                     f"{_number(m.get('variety'), 2)} ({_number(m.get('pixel_variety'), 2)})", _number(mean_agreement, 2),
                     _number(memo.get("median_ratio"), 2), _number(memo.get("near_copy_fraction"), 2)])
    return _table(header, rows, markdown)


def per_class_fd_table(gans: dict, class_names: list[str]) -> str:
    header = ["K", *class_names]
    rows = [[k, *(_number((gan.get("metrics") or {}).get("per_class_fd", {}).get(c), 1) for c in class_names)]
            for k, gan in gans.items()]
    return _table(header, rows, markdown=True)


def study_markdown(summary: dict, elapsed_s: float | None = None) -> str:
    p = summary["protocol"]
    gan = p["gan_config"]
    lines = [
        "# Does the synthetic data help?",
        "",
        f"Data: `{p['data_source']}` at {p['resolution']}x{p['resolution']}, {len(p['class_names'])} classes; "
        f"{p['n_train']} training / {p['n_test']} held-out test images (stratified split, "
        f"{_splits(p)}). "
        f"For each K, the GAN was trained on the K labelled images per class alone "
        f"({p['gan_steps']} steps, {gan['model']['arch']} G{gan['model']['g_channels']}/D{gan['model']['d_channels']}, "
        f"{gan['train']['loss']} loss, DiffAugment `{gan['train']['diffaug']}`, EMA {gan['train']['ema_decay']}); "
        f"{p['synthetic_per_class']} synthetic images per class (truncation {p['truncation'] or 'off'}) made "
        f"{round(100 * p['synthetic_fraction'])}% of each classifier batch in arms (c) and (d). "
        f"Classifier: a {len(p['classifier']['widths'])}-layer CNN, {p['classifier']['steps']} steps of batch "
        f"{p['classifier']['batch_size']}{_epochs(p['classifier'])}, the same for every arm of a K; "
        f"{p['seeds']} seeds per arm"
        f"{' and split' if 'split_seeds' in p else ''}. "
        + (f"Synthetic images kept only where the arm-(b) classifier gives their class at least "
           f"{p['filter_confidence']}. " if p.get("filter_confidence") else "")
        + ("Arms (f)-(i): the rest of the train split as unlabelled images; self-training keeps those the "
           f"arm-(b) classifier labels with confidence >= {p.get('pseudo_label_confidence')}; the semi-synthetic "
           "images come from a GAN trained on the labelled and the unlabelled images "
           f"({p.get('semi_gan')}); the synthetic-taught self-training takes its pseudo-labels from the arm-(d) "
           "classifier instead. " if p.get("unlabelled") else "")
        + "Protocol: docs/evaluation.md.",
        "",
        "## Held-out accuracy (%), mean ± 95% t-interval over seeds",
        "",
        accuracy_table(summary, markdown=True),
        "",
        "![accuracy vs K](figures/accuracy_vs_k.png)",
        "",
        "## Paired differences (same seed), in accuracy points",
        "",
        gains_table(summary, markdown=True),
        "",
        "## What to train on",
        "",
        "Per K, the arm of the highest mean accuracy and those not measurably worse than it (the paired "
        "difference to it has an interval reaching zero). Arm (e) is the generator's score, not a recipe.",
        "",
        recommendation_table(summary, markdown=True),
        "",
        "## GAN quality",
        "",
        "FD and KID in the feature space of a small classifier trained on the real training split; "
        "precision/recall with k=3; variety = how much the generated images of a class vary around their "
        "mean, over the same for the real images of the class (1: as much as the real data; in brackets, "
        "in pixel space); class agreement = share of generated images that classifier assigns "
        "to the class they were generated for. Memorisation: median pixel distance from a synthetic "
        "image to its nearest training image, divided by the same for held-out real images (below 1: "
        "closer to the training images than new real images are); near copies = share of synthetic "
        "images closer than the closest 5% of held-out images.",
        "",
        quality_table(summary["gan"]),
        "",
        "Per-class FD:",
        "",
        per_class_fd_table(summary["gan"], p["class_names"]),
        "",
    ]
    for k in summary["gan"] if "split_seeds" not in p else ():  # figures: in each split's own report
        lines += [f"![samples K={k}](figures/samples_k{k}.png) ![nearest neighbours K={k}](figures/nearest_k{k}.png)",
                  ""]
    if elapsed_s is not None:
        lines += [f"Wall time of the run that finished the study: {elapsed_s:.0f} s.", ""]
    return "\n".join(lines)


def _epochs(classifier: dict) -> str:
    epochs = classifier.get("min_epochs")
    return f" or {epochs:g} passes over the K labelled images where that is more" if epochs else ""


def _splits(protocol: dict) -> str:
    if "split_seeds" in protocol:
        return f"split seeds {', '.join(map(str, protocol['split_seeds']))}, pooled"
    return f"seed {protocol['split_seed']}"


def metrics_markdown(metrics: dict, model: str, data: str) -> str:
    lines = [f"# Quality of `{model}` against `{data}`", "", metrics_table(metrics, markdown=True), ""]
    if "per_class_fd" in metrics:
        names = list(metrics["per_class_fd"])
        rows = [["FD", *(_number(metrics["per_class_fd"][c], 1) for c in names)]]
        if "class_agreement" in metrics:
            rows.append(["class agreement", *(_number(metrics["class_agreement"][c], 2) for c in names)])
            rows.append(["(real images)", *(_number(metrics["class_agreement_real"][c], 2) for c in names)])
        lines += ["Per class:", "", _table(["", *names], rows, markdown=True), ""]
    memo = metrics["memorisation"]
    lines += [f"Memorisation baseline: {memo['baseline']}.", "",
              "![samples](samples.png) ![nearest neighbours](nearest.png)", ""]
    return "\n".join(lines)


def metrics_table(metrics: dict, markdown: bool = False) -> str:
    memo = metrics["memorisation"]
    rows = [
        ["FD", _number(metrics["fd"], 3)],
        ["KID", f"{_number(metrics['kid_mean'], 5)} ± {_number(metrics['kid_std'], 5)}"],
        ["precision", _number(metrics["precision"], 3)],
        ["recall", _number(metrics["recall"], 3)],
        *([["variety, features (pixels)", f"{_number(metrics['variety'], 3)} ({_number(metrics['pixel_variety'], 3)})"]]
          if "variety" in metrics else []),
        ["NN distance / baseline (median)", _number(memo["median_ratio"], 3)],
        ["near copies", _number(memo["near_copy_fraction"], 3)],
        ["images (real / generated)", f"{metrics['n_real']} / {metrics['n_fake']}"],
        ["feature network", f"{metrics['feature_network']} ({metrics['feature_dim']} features)"],
    ]
    return _table(["metric", "value"], rows, markdown)


# ------------------------------------------------------------------------------ figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here or on a cluster node
    import matplotlib.pyplot as plt

    return plt


def _to_display(images_u8: torch.Tensor) -> np.ndarray:
    """uint8 NCHW -> float NHW(C) for imshow."""
    x = images_u8.permute(0, 2, 3, 1).numpy().astype(np.float32) / 255.0
    return x[..., 0] if x.shape[-1] == 1 else x


def sample_grid(images_u8: torch.Tensor, labels: torch.Tensor, class_names: list[str], path: Path,
                title: str, per_class: int = 10, max_classes: int = 20) -> None:
    """One row per class, `per_class` images each."""
    plt = _pyplot()
    classes = list(range(min(len(class_names), max_classes)))
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.6, len(classes) * 0.6 + 0.5),
                             squeeze=False)
    for row, c in enumerate(classes):
        picks = _to_display(images_u8[labels == c][:per_class])
        for col in range(per_class):
            ax = axes[row][col]
            ax.set_xticks([]), ax.set_yticks([])
            if col < len(picks):
                ax.imshow(picks[col], cmap="gray", vmin=0, vmax=1)
            if col == 0:
                ax.set_ylabel(class_names[c], rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    _save(fig, path, plt)


def nearest_neighbour_grid(fake_u8: torch.Tensor, train_u8: torch.Tensor, memo, path: Path, title: str,
                           pairs: int = 16) -> None:
    """The synthetic images closest to a training image, each beside that image, with the distance."""
    plt = _pyplot()
    order = memo.fake_distance.argsort()[:pairs]
    columns = 4
    rows = math.ceil(len(order) / columns)
    fig, axes = plt.subplots(rows, columns * 2, figsize=(columns * 2 * 0.9, rows * 1.1 + 0.5), squeeze=False)
    fakes, reals = _to_display(fake_u8[order]), _to_display(train_u8[memo.fake_index[order]])
    for i in range(rows * columns):
        left, right = axes[i // columns][2 * (i % columns)], axes[i // columns][2 * (i % columns) + 1]
        for ax in (left, right):
            ax.set_xticks([]), ax.set_yticks([])
        if i < len(order):
            left.imshow(fakes[i], cmap="gray", vmin=0, vmax=1)
            right.imshow(reals[i], cmap="gray", vmin=0, vmax=1)
            left.set_title(f"d={float(memo.fake_distance[order[i]]):.3f}", fontsize=7)
        else:
            left.axis("off"), right.axis("off")
    fig.suptitle(title, fontsize=9)
    _save(fig, path, plt)


def accuracy_figure(summary: dict, path: Path) -> None:
    """Held-out accuracy vs K, one line per arm, with 95% intervals."""
    plt = _pyplot()
    ks = list(summary["accuracy"])
    x = np.arange(len(ks))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    arms = [a for a in ARM_LABELS if any(a in summary["accuracy"][k] for k in ks)]
    for offset, arm in zip(np.linspace(-0.12, 0.12, len(arms)), arms, strict=True):
        missing = {"mean": math.nan, "half_width": math.nan}
        means = np.array([100 * summary["accuracy"][k].get(arm, missing)["mean"] for k in ks])
        halves = np.array([100 * summary["accuracy"][k].get(arm, missing)["half_width"] for k in ks])
        ax.errorbar(x + offset, means, yerr=np.nan_to_num(halves), marker="o", capsize=3, label=ARM_LABELS[arm])
    ax.set_xticks(x, ks)
    ax.set_xlabel("labelled images per class (K)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Does the synthetic data help? (mean and 95% interval over seeds)", fontsize=9)
    _save(fig, path, plt)


def _save(fig, path: Path, plt) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_study_report(out_dir: Path, results: dict, elapsed_s: float | None = None) -> dict:
    summary = summarise(results)
    return write_summary(out_dir, summary, elapsed_s)


def write_summary(out_dir: Path, summary: dict, elapsed_s: float | None = None) -> dict:
    accuracy_figure(summary, out_dir / "figures" / "accuracy_vs_k.png")
    write_json(out_dir / "report.json", summary)
    write_atomic(out_dir / "report.md", study_markdown(summary, elapsed_s))
    return summary
