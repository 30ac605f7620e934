"""Evaluation as a library: quality metrics of a model, and the whole augmentation study.

`measure_model(...)` and `run_study(study_settings(...), out)` check their inputs before anything
heavy is loaded; every mistake is a UserError. The final tables are printed on stdout; progress
goes to the log (stderr).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from ganaug.errors import UserError
from ganaug.files import ensure_writable_dir, write_atomic
from ganaug.memory import check_fits

log = logging.getLogger(__name__)


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


def check_writable(out: Path) -> None:
    ensure_writable_dir(out, "--out")


def check_data_source(source: str, flag: str) -> None:
    """A misspelt dataset name is caught before a model is loaded or a directory made."""
    from ganaug.data import EMBEDDED_SOURCES, TORCHVISION_SOURCES

    known = (*EMBEDDED_SOURCES, *TORCHVISION_SOURCES)
    if source not in known and not Path(source).exists():
        raise UserError(f"{flag}: {source!r} is not a known dataset ({', '.join(known)}), "
                        "an image folder or a .npz file")


# What one image costs `measure_model` at its peak: its pixels as uint8 twice and as float32 twice
# (nearest neighbours in pixel space), its features (float32, then float64 for precision/recall, up to
# 2048 of them for a torchvision network) and one float64 row of a 2048-row k-NN distance block.
_METRIC_BYTES_PER_PIXEL = 10
_METRIC_BYTES_FIXED = 12 * 2048 + 9 * 2048 + 16


def use_all_cores(threads: int = 0) -> None:
    """One process does all the work here: every core by default, or `threads` (train.threads) on a
    machine shared with other jobs, where fewer threads than cores avoid waiting on descheduled ones."""
    import torch

    from ganaug.train.dist import cpu_threads

    torch.set_num_threads(cpu_threads(threads, 1))


# ------------------------------------------------------------------------------ metrics


def measure_model(model: str, data_source: str, out: Path, data_root: str = "data", n: int = 2000,
                  max_real: int = 10000, features: str | None = None, seed: int = 0, truncation: float = 0.0) -> dict:
    """FD, KID, precision/recall, per-class FD and memorisation of an ONNX model against real data;
    writes out/metrics.json, metrics.md and figures, prints the table, returns the metrics."""
    from ganaug.sampler.sampler import check_truncation

    check_truncation(truncation)
    check_data_source(data_source, "--data")
    check_writable(out)
    import torch

    from ganaug.config import DataConfig
    from ganaug.data import load_dataset
    from ganaug.evaluate import report
    from ganaug.evaluate.features import load_features, load_or_train_domain_features
    from ganaug.evaluate.metrics import quality_metrics
    from ganaug.sampler import Sampler

    use_all_cores()
    sampler = Sampler.load(model)
    height, width, channels = sampler.meta.image_shape
    if height != width:
        raise UserError(f"{model}: images are {height}x{width}; the metrics need square images")
    data = load_dataset(DataConfig(source=data_source, root=data_root, resolution=height, channels=channels,
                                   in_memory=True), key="--data")
    real, real_labels, class_names = _match_classes(data, sampler.meta.class_names if sampler.meta.conditional
                                                    else [], model)
    if len(real) > max_real:  # nearest neighbours and KID grow with the real set; keep them bounded
        keep = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))[:max_real]
        real, real_labels = real[keep], None if real_labels is None else real_labels[keep]
    check_fits(n + len(real), math.prod(sampler.meta.image_shape) * _METRIC_BYTES_PER_PIXEL + _METRIC_BYTES_FIXED,
               f"--n {n}: measuring {n} generated and {len(real)} real images of "
               f"{'x'.join(map(str, sampler.meta.image_shape))}",
               lambda fits: f"use --n {fits - len(real)} or less" if fits > len(real) else "lower --max-real too")
    log.info("generating %d images from %s", n, model)
    fake_nhwc, fake_labels = sampler.generate(n, seed=seed, truncation=truncation)
    fake = torch.from_numpy(fake_nhwc).permute(0, 3, 1, 2).contiguous()
    fake_labels = torch.from_numpy(fake_labels) if class_names else None
    if features:
        extractor = load_features(features, channels, height)
    else:
        # The feature net learns the data's own classes, whatever the model was conditioned on.
        extractor = load_or_train_domain_features(data.images, data.labels, data.num_classes, out / "features")
    metrics, memo = quality_metrics(extractor, real, real_labels if class_names else None, fake, fake_labels,
                                    class_names, seed=seed)
    metrics.update({"model": str(model), "data": data_source, "model_sha256": sampler.meta.sha256})
    report.write_json(out / "metrics.json", metrics)
    write_atomic(out / "metrics.md", report.metrics_markdown(metrics, model, data_source))
    if class_names:
        report.sample_grid(fake, fake_labels, class_names, out / "samples.png", title=f"Samples of {model}")
    report.nearest_neighbour_grid(fake, real, memo, out / "nearest.png",
                                  title="Closest generated images (left) and their nearest real image (right)")
    print(report.metrics_table(metrics))
    log.info("wrote %s", out / "metrics.md")
    return metrics


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


def study_settings(config_file: str | None = None, overrides=(), data: str | None = None, ks: str | None = None,
                   quick: bool = False, **options):
    """StudySettings from what a user gives: the preset (--quick or the full protocol) for the K values,
    seeds and GAN steps, then `options` (any StudySettings field by name; those not given keep the
    dataclass's default); the GAN config is the study's defaults < the config file < overrides."""
    from ganaug.evaluate.study import FULL, QUICK, StudySettings, resolve_gan_config

    preset = QUICK if quick else FULL
    cfg = resolve_gan_config(config_file, list(overrides) + ([f"data.source={data}"] if data else []))
    return StudySettings(ks=parse_ks(ks) if ks is not None else preset["ks"], gan_config=cfg.to_dict(),
                         **{"seeds": preset["seeds"], "gan_steps": preset["gan_steps"]} | options)


def run_study(settings, out: Path, split_seeds: list[int] | None = None) -> dict:
    """Run (or resume) the augmentation study into `out`; print and return its summary.

    With several split seeds, each split is a study of its own in out/split<S>/ and out/report.*
    pools them: every (split, seed) is one paired unit."""
    import dataclasses

    check_data_source(settings.gan_config["data"]["source"], "data.source")
    check_writable(out)
    from ganaug.evaluate import report
    from ganaug.evaluate.study import Study

    use_all_cores(settings.gan_config["train"]["threads"])
    start = time.perf_counter()
    if not split_seeds or len(split_seeds) == 1:
        if split_seeds:
            settings = dataclasses.replace(settings, split_seed=split_seeds[0])
        summary = report.write_study_report(out, _fits(Study(out, settings)).run(), elapsed_s=time.perf_counter() - start)
    else:
        summaries = []
        for split in split_seeds:
            folder = out / f"split{split}"
            log.info("split seed %d -> %s", split, folder)
            results = _fits(Study(folder, dataclasses.replace(settings, split_seed=split))).run()
            summaries.append(report.write_study_report(folder, results))
        summary = report.write_summary(out, report.combine(summaries), elapsed_s=time.perf_counter() - start)
    print(report.accuracy_table(summary))
    print()
    print(report.gains_table(summary))
    print()
    print(report.recommendation_table(summary))
    log.info("report: %s", out / "report.md")
    return summary


def _fits(study):
    """A synthetic set is read whole into memory (twice while its shards are joined), with a class
    probability per image when it is filtered: refuse a --synthetic-per-class that cannot fit before
    the first GAN is trained, not after."""
    per_class, classes = study.settings.synthetic_per_class, len(study.class_names)
    image_bytes = math.prod(study.data.images.shape[1:])
    check_fits(per_class * classes, 2 * image_bytes + 4 * classes + 16,
               f"--synthetic-per-class {per_class}: a synthetic set of {per_class} x {classes} classes",
               lambda fits: f"use --synthetic-per-class {max(1, fits // classes)} or less")
    return study
