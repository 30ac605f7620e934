"""The small CNN used twice: as the downstream classifier of the study and as the feature network.

Training works on whole tensors: the dataset is one uint8 tensor, a batch is one index operation,
classical augmentation is one batched affine warp, and the forward pass runs under bf16 autocast on
CPUs that have it. A batch may mix real and synthetic images in a fixed proportion, so a handful of
real images is never drowned by thousands of synthetic ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

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
    return images_u8.float().div(127.5).sub(1.0)


def random_affine(images: torch.Tensor, generator: torch.Generator, max_rotate_deg: float = 12.0,
                  max_shift: float = 0.12, scale_range: float = 0.1, max_shear_deg: float = 8.0) -> torch.Tensor:
    """Classical augmentation: a random rotation, shift, scale and shear per image, in one warp.

    images: float [N, C, H, W]; max_shift is a fraction of the image side. Pixels pulled from outside
    the image repeat the border (the background for centred objects such as digits).
    """
    n = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (high - low) + low

    angle = torch.deg2rad(uniform(-max_rotate_deg, max_rotate_deg))
    shear = torch.deg2rad(uniform(-max_shear_deg, max_shear_deg))
    scale = uniform(1 - scale_range, 1 + scale_range)
    shift = torch.stack([uniform(-max_shift, max_shift), uniform(-max_shift, max_shift)], dim=1) * 2  # [-1, 1] coords
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin + torch.tan(shear) * cos, shift[:, 0]], dim=1),
                         torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1)  # [N, 2, 3], output -> input
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 400
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    widths: tuple[int, ...] = (32, 64, 64)


@dataclass
class TrainingSet:
    """Real images (always) and optionally synthetic ones, drawn in a fixed share of each batch."""

    real_images: torch.Tensor  # uint8 [N, C, H, W]
    real_labels: torch.Tensor  # int64 [N]
    synthetic_images: torch.Tensor | None = None
    synthetic_labels: torch.Tensor | None = None
    synthetic_fraction: float = 0.0  # share of each batch drawn from the synthetic images

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n_synth = round(batch_size * self.synthetic_fraction) if self.synthetic_images is not None else 0
        n_real = batch_size - n_synth
        parts = []
        for images, labels, count in ((self.real_images, self.real_labels, n_real),
                                      (self.synthetic_images, self.synthetic_labels, n_synth)):
            if count:
                index = torch.randint(len(images), (count,), generator=generator)
                parts.append((images.index_select(0, index), labels.index_select(0, index)))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def autocast(device: torch.device):
    """bf16 autocast where the CPU or GPU runs it natively; fp32 otherwise."""
    return Precision("auto", device).autocast()


def train_classifier(data: TrainingSet, num_classes: int, settings: TrainSettings, seed: int,
                     augment: bool = False, device: torch.device | None = None) -> SmallCNN:
    """A SmallCNN trained for a fixed number of steps (AdamW, cosine decay); the same seed gives
    the same weights. Every arm of the study gets the same step budget whatever its data size."""
    device = device or torch.device("cpu")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # weight initialisation
    model = SmallCNN(data.real_images.shape[1], num_classes, settings.widths).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, settings.steps) / settings.steps)))
    model.train()
    for _ in range(settings.steps):
        images_u8, labels = data.batch(settings.batch_size, generator)
        x = images_u8.float().div(255.0)
        if augment:
            x = random_affine(x, generator)
        x, labels = (x * 2 - 1).to(device), labels.to(device)
        with autocast(device):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
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
