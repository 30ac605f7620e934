"""The one classifier recipe augment measures and writes with, and the ingredients it adds to it.

The estimate's units (folds.py) and the final output (api.py) both train through `Recipes`, so a
fold's student and the user's teacher are made the same way. It holds settings only (no data), so
it travels to the estimate's worker processes.

Its classifiers train on the GPU where torch sees one (`classifier_device`) and come back on the CPU,
so that what follows (saving, pseudo-labelling, the filter, the ONNX export) is the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ganaug.augment.settings import AugmentSettings
from ganaug.config import Config
from ganaug.errors import UserError
from ganaug.evaluate.classifier import (
    SmallCNN,
    TrainingSet,
    TrainSettings,
    predict_proba,
    train_classifier,
    train_fixmatch,
)
from ganaug.files import write_atomic


def classifier_device() -> torch.device:
    """Where augment's classifiers and teachers train: the GPU torch sees (the first of
    CUDA_VISIBLE_DEVICES), as `ganaug train` takes it for the generators, else the CPU. On the GPU
    cuDNN keeps to its deterministic kernels, so that a seed still gives one classifier."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    return torch.device("cuda")


@dataclass(frozen=True)
class Recipes:
    settings: AugmentSettings
    gan: Config  # the resolved config of the generators augment trains
    class_names: tuple[str, ...]
    channels: int
    model: Path | None  # --model; None: a generator is trained on the images it is given

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def budget(self, n_labelled: int, steps: int | None = None) -> TrainSettings:
        """A classifier's budget: --classifier-steps (or `steps`), at least --classifier-min-epochs passes
        over its labelled images."""
        return TrainSettings(steps=steps or self.settings.classifier_steps,
                             min_epochs=self.settings.classifier_min_epochs).budget(n_labelled)

    def train(self, images, labels, n_labelled: int, seed: int, policy: str, synthetic=None) -> SmallCNN:
        """The classifier: every image warped by the policy (the user's training loop warps every
        image of the folder it gets too); synthetic images take their share of each batch."""
        data = TrainingSet(images, labels, warp_synthetic=True)
        if synthetic is not None and len(synthetic[0]):
            data = TrainingSet(images, labels, synthetic[0], synthetic[1],
                               synthetic_fraction=self.settings.synthetic_share, warp_synthetic=True)
        return train_classifier(data, self.num_classes, self.budget(n_labelled), seed=seed, augment=True,
                                policy=policy, device=classifier_device()).cpu()

    def fixmatch(self, images, labels, unlabelled: torch.Tensor, seed: int) -> SmallCNN:
        """The pseudo-labelling teacher: the same network, trained FixMatch-style for --teacher-steps on
        the labelled images and `unlabelled`."""
        return train_fixmatch(TrainingSet(images, labels), unlabelled, self.num_classes,
                              self.budget(len(labels), self.settings.teacher_steps), seed=seed,
                              device=classifier_device()).cpu()

    def pseudo(self, teacher: SmallCNN, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The images `teacher` labels with at least --pseudo-label-confidence, and those labels."""
        confidence, labels = predict_proba(teacher, images).max(1)
        keep = confidence >= self.settings.pseudo_label_confidence
        return images[keep], labels[keep]

    def synthetic(self, generator: Path, teacher: SmallCNN):
        """The first --synthetic-per-class images of every class that `teacher` keeps: the kept set
        and its (images NCHW, labels) tensors."""
        from ganaug.augment.synthetic import keep_first_per_class, torch_scorer
        from ganaug.sampler import Sampler

        s = self.settings
        kept = keep_first_per_class(Sampler.load(generator), torch_scorer(teacher), s.synthetic_per_class,
                                    s.filter_confidence, seed=s.seed)
        return kept, (torch.from_numpy(kept.images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(kept.labels))

    def generator(self, images, labels, work: Path, gan: Config | None = None, progress: bool = False) -> Path:
        """--model, or a generator trained on these labelled images alone, in `work` (resumable)."""
        if self.model is not None:
            return self.model
        from ganaug.augment.synthetic import train_generator

        return train_generator(images, labels, list(self.class_names), gan or self.gan, work,
                               self.settings.gan_steps, progress, self.settings.gan_processes)

    # -- classifiers as files: how the estimate's units and the output's shards hand them on ----

    @staticmethod
    def save(model: SmallCNN, path: Path) -> None:
        state = model.state_dict()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda f: torch.save(state, f))

    def load(self, path: Path, remedy: str) -> SmallCNN:
        """A classifier `save` wrote, through the one safe checkpoint loader; a damaged or foreign
        file is one line that ends with `remedy`."""
        from ganaug.train.checkpoint import safe_load

        model = SmallCNN(self.channels, self.num_classes, self.budget(1).widths)
        try:
            weights = safe_load(path, str(path))
            try:
                model.load_state_dict(weights)
            except (RuntimeError, ValueError, TypeError, AttributeError, KeyError) as exc:
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise UserError(f"{path} does not hold a classifier augment trained ({reason})") from None
        except UserError as exc:
            raise UserError(f"{exc}; {remedy}") from None
        return model.eval()
