"""`ganaug evaluate`: quality metrics of a model, or the whole augmentation study.

    ganaug evaluate metrics --model M.onnx --data digits --out DIR [--n N] [--features PATH]
    ganaug evaluate study --out DIR [--config F] [--k 5,10,20,all] [--seeds 3] [--gan-steps N]
                          [--quick] [key=value ...]

Arguments are checked before anything heavy is loaded; every mistake is one line and exit 2.
The final table is the only thing printed on stdout; progress goes to the log (stderr).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ganaug.cli import finite_float, positive_int
from ganaug.errors import UserError
from ganaug.files import ensure_writable_dir

log = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a mistake as a UserError (one line, exit 2) instead of usage + exit."""

    def error(self, message: str):
        raise UserError(message)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1")
    return value


def parse_ks(text: str) -> list:
    """'5,10,20,all' -> [5, 10, 20, None] (None = all labelled images), in the order given."""
    ks = []
    for part in (p.strip() for p in text.split(",")):
        if part.lower() == "all":
            ks.append(None)
            continue
        try:
            k = int(part)
        except ValueError:
            raise UserError(f"--k: {part!r} is not a whole number or 'all' (e.g. --k 5,10,20,all)") from None
        if k <= 0:
            raise UserError(f"--k: {k} must be positive")
        ks.append(k)
    if not ks or len(set(ks)) != len(ks):
        raise UserError(f"--k: {text!r} must list distinct values (e.g. --k 5,10,20,all)")
    return ks


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ganaug evaluate", description="Does the synthetic data help?")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    m = sub.add_parser("metrics", help="FD, KID, precision/recall, per-class FD and memorisation of a model",
                       description="Measure a ganaug ONNX model against real data.")
    m.add_argument("--model", required=True, help="ganaug ONNX model")
    m.add_argument("--data", required=True, help="real data: digits | mnist | fashion_mnist | cifar10 | folder | .npz")
    m.add_argument("--data-root", default="data", help="where torchvision datasets are looked for")
    m.add_argument("--out", required=True, help="output directory (metrics.json, metrics.md, figures)")
    m.add_argument("--n", type=positive_int, default=2000, help="generated images (class-balanced)")
    m.add_argument("--max-real", type=positive_int, default=10000,
                   help="real images compared against (a seeded random subset beyond this)")
    m.add_argument("--features", help="another feature network: a ganaug feature_net_*.pt, a TorchScript file, "
                                      "or ARCH:STATE_DICT for a torchvision classifier (e.g. inception_v3:pt.pth)")
    m.add_argument("--seed", type=int, default=0, help="latent seed of the generated images")
    m.add_argument("--truncation", type=finite_float, default=0.0, help="truncation of the latents (0: off)")
    m.set_defaults(run=run_metrics)

    s = sub.add_parser("study", help="the augmentation study: train, export, sample, classify",
                       description="Run the augmentation protocol of docs/evaluation.md; re-running resumes it.")
    s.add_argument("--out", required=True, help="output directory (state.json, report.md, report.json, figures)")
    s.add_argument("--config", help="GAN config file (YAML); data.source names the real data")
    s.add_argument("--data", help="real data (sets data.source)")
    s.add_argument("--k", help="labelled images per class, comma-separated, 'all' for all (default 5,10,20,all)")
    s.add_argument("--seeds", type=positive_int, help="classifier seeds per arm (default 3)")
    s.add_argument("--gan-steps", type=positive_int, help="GAN training steps per K")
    s.add_argument("--quick", action="store_true", help="the short version: K=5,20, 2 seeds, fewer GAN steps")
    s.add_argument("--test-fraction", type=_fraction, default=0.3, help="held-out share of the real data")
    s.add_argument("--split-seed", type=int, default=0, help="seed of the train/test split and K subsets")
    s.add_argument("--synthetic-per-class", type=positive_int, default=2000, help="synthetic images per class")
    s.add_argument("--synthetic-fraction", type=_fraction, default=0.5,
                   help="share of each classifier batch drawn from synthetic images in the mixed arms")
    s.add_argument("--truncation", type=finite_float, default=0.0,
                   help="truncation of the sampler's latents: redraw values beyond this magnitude (0: off)")
    s.add_argument("--classifier-steps", type=positive_int, default=400, help="classifier training steps (every arm)")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="GAN config overrides, e.g. train.loss=bce")
    s.set_defaults(run=run_study)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args) or 0


def check_writable(out: Path) -> None:
    ensure_writable_dir(out, "--out")


def check_data_source(source: str, flag: str) -> None:
    """A misspelt dataset name is caught before a model is loaded or a directory made."""
    from ganaug.data import TORCHVISION_SOURCES

    if source != "digits" and source not in TORCHVISION_SOURCES and not Path(source).exists():
        raise UserError(f"{flag}: {source!r} is not a known dataset (digits, {', '.join(TORCHVISION_SOURCES)}), "
                        "an image folder or a .npz file")


def set_threads(threads: int = 0) -> None:
    """One process does all the work here: every core by default (a torchrun-style OMP_NUM_THREADS=1
    in the environment aside), or `threads` (train.threads) on a machine shared with other jobs,
    where fewer threads than cores avoid waiting on descheduled ones."""
    import os

    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads or cores)


# ------------------------------------------------------------------------------ metrics


def run_metrics(args) -> int:
    if args.truncation < 0:
        raise UserError(f"--truncation must be 0 (off) or positive, got {args.truncation}")
    check_data_source(args.data, "--data")
    out = Path(args.out)
    check_writable(out)
    import torch

    from ganaug.config import DataConfig
    from ganaug.data import load_dataset
    from ganaug.evaluate import report
    from ganaug.evaluate.features import load_features, load_or_train_domain_features
    from ganaug.evaluate.metrics import quality_metrics
    from ganaug.sampler import Sampler

    set_threads()
    sampler = Sampler.load(args.model)
    height, width, channels = sampler.meta.image_shape
    if height != width:
        raise UserError(f"{args.model}: images are {height}x{width}; the metrics need square images")
    data = load_dataset(DataConfig(source=args.data, root=args.data_root, resolution=height, channels=channels,
                                   in_memory="true"))
    real, real_labels, class_names = _match_classes(data, sampler.meta.class_names if sampler.meta.conditional
                                                    else [], args.model)
    if len(real) > args.max_real:  # nearest neighbours and KID grow with the real set; keep them bounded
        keep = torch.randperm(len(real), generator=torch.Generator().manual_seed(args.seed))[: args.max_real]
        real, real_labels = real[keep], None if real_labels is None else real_labels[keep]
    log.info("generating %d images from %s", args.n, args.model)
    fake_nhwc, fake_labels = sampler.generate(args.n, seed=args.seed, truncation=args.truncation)
    fake = torch.from_numpy(fake_nhwc).permute(0, 3, 1, 2).contiguous()
    fake_labels = torch.from_numpy(fake_labels) if class_names else None
    if args.features:
        extractor = load_features(args.features, channels, height)
    else:
        # The feature net learns the data's own classes, whatever the model was conditioned on.
        extractor = load_or_train_domain_features(data.images, data.labels, data.num_classes, out / "features")
    metrics, memo = quality_metrics(extractor, real, real_labels if class_names else None, fake, fake_labels,
                                    class_names, seed=args.seed)
    metrics.update({"model": str(args.model), "data": args.data, "model_sha256": sampler.meta.sha256})
    report.write_json(out / "metrics.json", metrics)
    (out / "metrics.md").write_text(report.metrics_markdown(metrics, args.model, args.data))
    if class_names:
        report.sample_grid(fake, fake_labels, class_names, out / "samples.png", title=f"Samples of {args.model}")
    report.nearest_neighbour_grid(fake, real, memo, out / "nearest.png",
                                  title="Closest generated images (left) and their nearest real image (right)")
    print(report.metrics_table(metrics))
    log.info("wrote %s", out / "metrics.md")
    return 0


def _match_classes(data, model_classes: list[str], model: str):
    """Real images and labels in the model's class indices (classes the model lacks are left out)."""
    import torch

    if not model_classes:
        return data.images, None, []
    if data.labels is None:
        raise UserError(f"{model} is conditional but the data has no labels")
    missing = [c for c in model_classes if c not in data.class_names]
    if missing:
        raise UserError(f"{model}: classes {missing} are not in the data's classes {data.class_names}")
    to_model = torch.full((len(data.class_names),), -1, dtype=torch.int64)
    for index, name in enumerate(model_classes):
        to_model[data.class_names.index(name)] = index
    labels = to_model[data.labels]
    keep = labels >= 0
    return data.images[keep], labels[keep], list(model_classes)


# ------------------------------------------------------------------------------ study


def study_settings(args):
    from ganaug.evaluate.classifier import TrainSettings
    from ganaug.evaluate.study import FULL, QUICK, StudySettings, resolve_gan_config

    preset = QUICK if args.quick else FULL
    ks = parse_ks(args.k) if args.k is not None else preset["ks"]
    if args.truncation < 0:
        raise UserError(f"--truncation must be 0 (off) or positive, got {args.truncation}")
    if args.test_fraction in (0.0, 1.0):
        raise UserError("--test-fraction must be strictly between 0 and 1")
    overrides = list(args.overrides) + ([f"data.source={args.data}"] if args.data else [])
    cfg = resolve_gan_config(args.config, overrides)
    return StudySettings(
        ks=ks, seeds=args.seeds or preset["seeds"], gan_steps=args.gan_steps or preset["gan_steps"],
        gan_config=cfg.to_dict(), test_fraction=args.test_fraction, split_seed=args.split_seed,
        synthetic_per_class=args.synthetic_per_class, synthetic_fraction=args.synthetic_fraction,
        truncation=args.truncation, classifier=TrainSettings(steps=args.classifier_steps))


def run_study(args) -> int:
    out = Path(args.out)
    settings = study_settings(args)  # config mistakes first, before any directory is made
    check_data_source(settings.gan_config["data"]["source"], "data.source")
    check_writable(out)
    from ganaug.evaluate import report
    from ganaug.evaluate.study import Study

    set_threads(settings.gan_config["train"]["threads"])
    start = time.perf_counter()
    study = Study(out, settings)
    results = study.run()
    summary = report.write_study_report(out, results, elapsed_s=time.perf_counter() - start)
    print(report.accuracy_table(summary))
    print()
    print(report.gains_table(summary))
    log.info("report: %s", out / "report.md")
    return 0
