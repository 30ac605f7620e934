"""The small CNN used twice: as the downstream classifier of the study and as the feature network.

Training works on whole tensors: the dataset is one uint8 tensor, a batch is one index operation,
classical augmentation is a policy of policies.py, and the forward pass runs under bf16 autocast on
CPUs that have it. A batch may mix real and synthetic images in a fixed proportion, so a handful of
real images is never drowned by thousands of synthetic ones.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ganaug.errors import UserError
from ganaug.evaluate.policies import build_policy
from ganaug.pixels import to_unit
from ganaug.train.precision import Precision


class SmallCNN(nn.Module):
    """Three 3x3 conv blocks, global average pooling, a linear head. Any input resolution >= 8."""

    def __init__(self, channels: int, num_classes: int, widths: tuple[int, ...] = (32, 64, 64)):
        super().__init__()
        layers, c_in = [], channels
        for i, c_out in enumerate(widths):
            layers += [nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:  # 16x16 -> 8x8 -> 4x4 for the default three blocks
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, num_classes)
        self.num_features = c_in

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer: pooled ReLU activations, [N, widths[-1]]."""
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def to_input(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float in [-1, 1], the classifier's input."""
    return to_unit(images_u8)


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 400
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    widths: tuple[int, ...] = (32, 64, 64)
    min_epochs: float = 0.0  # budget(n): at least this many passes over n images, if more than `steps`

    def budget(self, n_images: int) -> TrainSettings:
        """These settings with `steps` raised to `min_epochs` passes over n_images (a whole batch each).
        A fixed step count starves large training sets: with 1,257 labelled images, 400 steps pass over
        each real image about 10 times where half of every batch is synthetic (docs/evaluation.md)."""
        return replace(self, steps=max(self.steps, math.ceil(self.min_epochs * n_images / self.batch_size)))


@dataclass
class TrainingSet:
    """Real images (always) and optionally synthetic ones, drawn in a fixed share of each batch."""

    real_images: torch.Tensor  # uint8 [N, C, H, W]
    real_labels: torch.Tensor  # int64 [N]
    synthetic_images: torch.Tensor | None = None
    synthetic_labels: torch.Tensor | None = None
    synthetic_fraction: float = 0.0  # share of each batch drawn from the synthetic images
    # Whether classical augmentation warps the synthetic images too, or the real ones alone. Off: a
    # generator's images already vary, and warping them again made the mixed arm no better than
    # classical augmentation alone (docs/evaluation.md, "What was tried").
    warp_synthetic: bool = False

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(images, labels, how many of the leading rows to warp under classical augmentation)."""
        n_synth = round(batch_size * self.synthetic_fraction) if self.synthetic_images is not None else 0
        n_real = batch_size - n_synth
        parts = []
        for images, labels, count in ((self.real_images, self.real_labels, n_real),
                                      (self.synthetic_images, self.synthetic_labels, n_synth)):
            if count:
                index = torch.randint(len(images), (count,), generator=generator)
                parts.append((images.index_select(0, index), labels.index_select(0, index)))
        return (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                batch_size if self.warp_synthetic else n_real)


def autocast(device: torch.device):
    """bf16 autocast where the CPU or GPU runs it natively; fp32 otherwise."""
    return Precision("auto", device).autocast()


def _trainable(channels: int, num_classes: int, settings: TrainSettings, device: torch.device):
    """A SmallCNN in training mode and update(loss): one AdamW step on the cosine schedule over
    settings.steps, what every classifier here trains with."""
    model = SmallCNN(channels, num_classes, settings.widths).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, settings.steps) / settings.steps)))

    def update(loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()

    return model.train(), update


def train_classifier(data: TrainingSet, num_classes: int, settings: TrainSettings, seed: int,
                     augment: bool = False, device: torch.device | None = None, policy: str = "affine") -> SmallCNN:
    """A SmallCNN trained for a fixed number of steps (AdamW, cosine decay); the same seed gives
    the same weights. Every arm of the study gets the same step budget whatever its data size.
    augment: classical augmentation (`policy`, one of policies.POLICIES) of the real images, and of
    the synthetic ones too where data.warp_synthetic says so."""
    device = device or torch.device("cpu")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # weight initialisation, and the draws of torchvision's policies
    warp = build_policy(policy, data.real_images.shape[-1]) if augment else None
    model, update = _trainable(data.real_images.shape[1], num_classes, settings, device)
    for _ in range(settings.steps):
        images_u8, labels, n_warped = data.batch(settings.batch_size, generator)
        x = images_u8.float().div(255.0)
        if warp is not None and n_warped:
            x = torch.cat([warp(x[:n_warped], generator), x[n_warped:]])
        x, labels = (x * 2 - 1).to(device), labels.to(device)
        with autocast(device):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), labels)
        update(loss)
    return model.eval()


@dataclass(frozen=True)
class FixMatchSettings:
    """FixMatch (Sohn et al. 2020) as the paper sets it, but mu = 3 unlabelled images per labelled one
    instead of 7 (a 2-core CPU): a weakly warped view makes a pseudo-label where the classifier is
    this sure, and the strongly augmented view of the same image is trained towards it."""

    threshold: float = 0.95
    mu: int = 3
    unlabelled_weight: float = 1.0
    weak: str = "affine"
    strong: str = "randaugment"  # RandAugment and cutout, as the paper's strong view


def train_fixmatch(data: TrainingSet, unlabelled: torch.Tensor, num_classes: int, settings: TrainSettings,
                   seed: int, fixmatch: FixMatchSettings = FixMatchSettings(),
                   device: torch.device | None = None) -> SmallCNN:
    """The no-GAN semi-supervised bar: a SmallCNN trained with FixMatch's two losses on the labelled
    images (weakly warped) and uint8 `unlabelled` images [N, C, H, W], with the same optimiser,
    schedule and steps as train_classifier."""
    device = device or torch.device("cpu")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    side = data.real_images.shape[-1]
    weak, strong = build_policy(fixmatch.weak, side), build_policy(fixmatch.strong, side)
    model, update = _trainable(data.real_images.shape[1], num_classes, settings, device)
    for _ in range(settings.steps):
        images_u8, labels, _ = data.batch(settings.batch_size, generator)
        index = torch.randint(len(unlabelled), (fixmatch.mu * settings.batch_size,), generator=generator)
        pool = unlabelled.index_select(0, index).float().div(255.0)
        x = torch.cat([weak(images_u8.float().div(255.0), generator), weak(pool, generator), strong(pool, generator)])
        with autocast(device):
            logits = model((x * 2 - 1).to(device)).float()
        n = len(labels)
        logits_weak, logits_strong = logits[n:].chunk(2)
        confidence, pseudo = logits_weak.detach().softmax(1).max(1)
        mask = (confidence >= fixmatch.threshold).float()
        loss = (F.cross_entropy(logits[:n], labels.to(device))
                + fixmatch.unlabelled_weight * (F.cross_entropy(logits_strong, pseudo, reduction="none") * mask).mean())
        update(loss)
    return model.eval()


@torch.no_grad()
def predict_proba(model: SmallCNN, images_u8: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Class probabilities, float32 [N, classes]."""
    device = next(model.parameters()).device
    out = []
    for chunk in images_u8.split(batch_size):
        with autocast(device):
            out.append(model(to_input(chunk.to(device))).float().softmax(1).cpu())
    return torch.cat(out) if out else torch.empty(0, model.head.out_features)


def predict(model: SmallCNN, images_u8: torch.Tensor) -> torch.Tensor:
    """Predicted class indices, int64 [N]."""
    return predict_proba(model, images_u8).argmax(1)


def accuracy(model: SmallCNN, images_u8: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predict(model, images_u8) == labels).float().mean())


# ------------------------------------------------------------------------------ the filter's classifier

VERIFY_BATCHES = (1, 7, 64)  # the batch axis is dynamic: an odd size and a larger one
MAX_LOGIT_ERROR = 1e-3  # fp32 against fp32: kernels differ (oneDNN vs MLAS), the arithmetic does not
MAX_PROBABILITY_ERROR = 1e-4


class _ImageClassifier(nn.Module):
    """The sampler's filter contract around a classifier of float [N, C, H, W] in [-1, 1]: uint8 images
    [N, H, W, C] in (the generator's output, the very pixels written), `logits` [N, classes] out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_unit(images.permute(0, 3, 1, 2))  # = to_input, in the graph
        return self.model(x).float()


def export_classifier_onnx(model: nn.Module, path: str | Path, image_shape: tuple[int, int, int],
                           class_names: list[str] | None = None) -> Path:
    """Write a classifier as an ONNX model for `ganaug sample --filter` (docs/sampler.md, "Filtering").

    model: any module mapping float [N, C, H, W] in [-1, 1] (to_input's scaling) to logits [N, classes],
    such as the study's SmallCNN; image_shape: (H, W, C) of the generator's images; class_names, in the
    generator's order, are written into the model so the sampler can check them. The graph takes uint8
    [N, H, W, C] (the scaling is inside it) and outputs `logits` float32 [N, classes], N dynamic. It is
    checked against the contract and against PyTorch in onnxruntime before the file is written,
    atomically (an existing file is replaced)."""
    import onnx

    from ganaug.contract import check_classifier_graph, classifier_metadata
    from ganaug.export.onnx_export import DEFAULT_OPSET
    from ganaug.files import write_atomic
    from ganaug.sampler.runtime import cpu_session

    height, width, channels = image_shape
    wrapper = _ImageClassifier(copy.deepcopy(model).float().cpu()).eval()
    example = torch.zeros(2, height, width, channels, dtype=torch.uint8)  # torch.export specialises 0 and 1
    with torch.no_grad():
        num_classes = wrapper(example).shape[1]
    if class_names is not None and len(class_names) != num_classes:
        raise UserError(f"the classifier has {num_classes} classes but {len(class_names)} class names were given")
    program = torch.onnx.export(wrapper, (example,), dynamo=True, opset_version=DEFAULT_OPSET,
                                input_names=["images"], output_names=["logits"],
                                dynamic_shapes={"images": {0: "N"}}, external_data=False, optimize=True,
                                verbose=False)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, classifier_metadata(num_classes, image_shape, class_names))
    proto.doc_string = ("ganaug classifier for `ganaug sample --filter`: input images uint8 [N, H, W, C], "
                        "output logits float32 [N, classes]")
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    session = cpu_session(data)
    check_classifier_graph(session, image_shape, num_classes, str(path))
    _verify_classifier(wrapper, session, image_shape, str(path))
    write_atomic(path, data, fsync=True)
    return Path(path)


def _verify_classifier(wrapper: nn.Module, session, image_shape: tuple[int, int, int], source: str) -> None:
    """onnxruntime against PyTorch (fp32) on random images at several batch sizes."""
    generator = np.random.default_rng(1_000_003)
    for batch in VERIFY_BATCHES:
        images = generator.integers(0, 256, (batch, *image_shape), dtype=np.uint8)
        onnx_logits = session.run(["logits"], {session.get_inputs()[0].name: images})[0]
        with torch.no_grad():
            torch_logits = wrapper(torch.from_numpy(images)).numpy()
        logit_error = float(np.abs(onnx_logits - torch_logits).max())
        probability_error = float(np.abs(_softmax(onnx_logits) - _softmax(torch_logits)).max())
        if logit_error > MAX_LOGIT_ERROR or probability_error > MAX_PROBABILITY_ERROR:
            raise UserError(f"{source}: the exported classifier differs from PyTorch on a batch of {batch} "
                            f"(logits by up to {logit_error:.3g}, probabilities by {probability_error:.3g}); "
                            "nothing was written")


def _softmax(logits: np.ndarray) -> np.ndarray:
    values = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return np.exp(values) / np.exp(values).sum(axis=1, keepdims=True)
