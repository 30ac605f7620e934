"""Synthetic images for augment: a generator trained on given labelled images only, and the first N
images of each class that the teacher gives their class with confidence.

"N per class" counts images kept, not drawn: image i of the generator (class i % classes) is drawn
in index order and kept while its class has fewer than N, so the kept set depends on (model, seed,
teacher, tau, N) alone, never on the batch size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ganaug.config import Config
from ganaug.errors import Stopped
from ganaug.train import with_overrides

log = logging.getLogger(__name__)

# Draws per kept image of a class before giving up on filling it: a class the teacher rejects 49 times
# in 50 is left short (and the report says so) rather than drawn without end.
MAX_DRAWS_PER_KEPT = 50


@dataclass
class KeptImages:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]
    scores: np.ndarray  # float32 [N]: the teacher's probability of the label
    indices: np.ndarray  # int64 [N]: the generator's image index (with the seed, what made it)
    drawn: int


def keep_first_per_class(sampler, score: Callable[[np.ndarray, np.ndarray], np.ndarray], per_class: int,
                         min_confidence: float, seed: int, batch_size: int = 256) -> KeptImages:
    """The first `per_class` images of every class of `sampler` (a ganaug.sampler.Sampler) whose
    score (the probability of their own class) is at least `min_confidence`.

    Image i has class i % classes; indices are visited in order, and an image of a class already
    full is never generated, so a class the teacher rarely keeps costs draws of that class alone."""
    classes = sampler.meta.num_classes
    have, drawn = np.zeros(classes, np.int64), np.zeros(classes, np.int64)
    limit = per_class * MAX_DRAWS_PER_KEPT  # draws per class
    kept: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    start = 0
    while ((have < per_class) & (drawn < limit)).any():
        # batch_size images of each class; windows start at multiples of `classes`, so position p of
        # the window holds the (p // classes)-th image of its class in it
        window = np.arange(start, start + batch_size * classes, dtype=np.int64)
        start += len(window)
        labels = window % classes
        wanted = (have[labels] < per_class) & (drawn[labels] + np.arange(len(window)) // classes < limit)
        window, labels = window[wanted], labels[wanted]
        for offset in range(0, len(window), batch_size):
            indices, batch_labels = window[offset:offset + batch_size], labels[offset:offset + batch_size]
            images = sampler.images_for(indices, batch_labels, seed=seed)
            scores = score(images, batch_labels)
            take = np.zeros(len(indices), bool)
            for row in np.flatnonzero(scores >= min_confidence):  # index order: the batch size does not matter
                if have[batch_labels[row]] < per_class:
                    have[batch_labels[row]] += 1
                    take[row] = True
            np.add.at(drawn, batch_labels, 1)
            kept.append((images[take], batch_labels[take], scores[take], indices[take]))
    short = [int(c) for c in np.flatnonzero(have < per_class)]
    if short:
        log.warning("the teacher kept fewer than %d images of class(es) %s in %d draws of each", per_class, short,
                    limit)
    images, labels, scores, indices = (np.concatenate(parts) for parts in zip(*kept, strict=True))
    order = np.argsort(indices, kind="stable")
    return KeptImages(images[order], labels[order].astype(np.int64), scores[order].astype(np.float32),
                      indices[order].astype(np.int64), int(drawn.sum()))


def torch_scorer(model: torch.nn.Module) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """score(images uint8 NHWC, labels) -> float32 probability of each label, from a torch classifier."""
    from ganaug.evaluate.classifier import predict_proba

    def score(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        probabilities = predict_proba(model, torch.from_numpy(images).permute(0, 3, 1, 2))
        return probabilities[torch.arange(len(labels)), torch.from_numpy(labels)].numpy().astype(np.float32)

    return score


def train_generator(images: torch.Tensor, labels: torch.Tensor, class_names: list[str], gan: Config,
                    work: Path, steps: int, progress: bool = True, processes: int = 1) -> Path:
    """Train (or resume) a GAN on these labelled images alone and export it; the ONNX model's path.
    The images go to work/labelled.npz, so the run provably sees nothing else. processes > 1: under
    torchrun, each process a batch of its share of the images."""
    from ganaug import train
    from ganaug.augment.children import train_under_torchrun
    from ganaug.config import dump_yaml
    from ganaug.evaluate.study import write_labelled_npz
    from ganaug.export import export_model

    model = work / "generator.onnx"
    if model.is_file():
        return model
    npz = work / "labelled.npz"
    if not npz.is_file():
        write_labelled_npz(npz, images, labels, class_names)
    batch = min(gan.train.batch_size, max(1, len(images) // processes))
    cfg = with_overrides(gan, data={"source": str(npz), "unlabelled": ""}, train={"steps": steps, "batch_size": batch},
                         log={"progress": progress and processes == 1})
    log.info("training a generator on %d labelled images (%d steps) in %s", len(images), steps, work / "run")
    if processes > 1:
        train_under_torchrun(dump_yaml(cfg), work / "run", processes, steps)
    else:
        result = train.run(cfg, work / "run")
        if not result.completed:  # a signal stopped training (saved): stop here too, resumable
            raise Stopped(result.stop_signal)
    export_model(work / "run", model, force=True)
    return model
