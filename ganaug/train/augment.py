"""DiffAugment (Zhao et al., 2020) with adaptive strength (ADA, Karras et al., 2020), on images in [-1, 1].

The same random augmentation family is applied to real and fake images before D, so D cannot
memorise a small dataset while gradients still reach G through the augmentation. Each policy is
applied to each image with probability p. With a fixed p = 1 (the default) every image is
augmented; with `train.ada_target` > 0, p starts at 0 and follows D's overfitting: the share of
real images D scores positive, E[sign(D(x))], above the target raises p, below lowers it.
"""

from __future__ import annotations

import typing

import torch
import torch.nn.functional as F

from ganaug.config import AugmentPolicy


def color(x: torch.Tensor) -> torch.Tensor:
    b = x.shape[0]
    x = x + (torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) * 2) + mean  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5) + mean  # contrast


def shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Shift image i by (dy[i], dx[i]) pixels, filling with zeros; keeps x's memory format."""
    b, _, h, w = x.shape
    # Source rows/columns in a zero-padded copy; out-of-range sources land on the zero border.
    rows = (torch.arange(h, device=x.device).view(1, h, 1) - dy.view(b, 1, 1) + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) - dx.view(b, 1, 1) + 1).clamp(0, w + 1)
    padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # [B, H+2, W+2, C]
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    shifted = padded[batch, rows, cols].permute(0, 3, 1, 2)
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format
    return shifted.contiguous(memory_format=layout)


def translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ratio * size pixels in each direction."""
    b, _, h, w = x.shape
    max_dy, max_dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-max_dy, max_dy + 1, (b,), device=x.device)
    dx = torch.randint(-max_dx, max_dx + 1, (b,), device=x.device)
    return shift(x, dy, dx)


def cutout_mask(top: torch.Tensor, left: torch.Tensor, size: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor:
    """Bool [B, H, W]: True inside the square of `size` at (top, left) (which may hang over the edge)."""
    (size_y, size_x), (h, w) = size, shape
    ys = torch.arange(h, device=top.device).view(1, h, 1)
    xs = torch.arange(w, device=top.device).view(1, 1, w)
    top, left = top.view(-1, 1, 1), left.view(-1, 1, 1)
    return (ys >= top) & (ys < top + size_y) & (xs >= left) & (xs < left + size_x)


def cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero one random square of ratio * size per image (its centre anywhere in the image)."""
    b, _, h, w = x.shape
    size_y, size_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(-(size_y // 2), h - size_y // 2, (b,), device=x.device)
    left = torch.randint(-(size_x // 2), w - size_x // 2, (b,), device=x.device)
    inside = cutout_mask(top, left, (size_y, size_x), (h, w))
    return x * (~inside).unsqueeze(1).to(x.dtype)


POLICIES = {"color": color, "translation": translation, "cutout": cutout}
assert set(POLICIES) == set(typing.get_args(AugmentPolicy)), "config's policy names and these must agree"


class AdaptiveAugment:
    """DiffAugment whose policies each apply to an image with probability p (fixed, or adapted)."""

    def __init__(self, policies: list[str], p: float = 1.0, target: float = 0.0, speed_kimg: float = 20.0):
        self.functions = [POLICIES[name] for name in policies]
        self.p = 0.0 if target > 0 else p  # ADA starts with no augmentation and earns it
        self.target, self.speed_kimg = target, speed_kimg

    @property
    def adaptive(self) -> bool:
        return self.target > 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.p <= 0:
            return x
        for function in self.functions:
            augmented = function(x)
            if self.p < 1:  # a per-image choice, still differentiable: where() passes both gradients
                chosen = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < self.p
                augmented = torch.where(chosen, augmented, x)
            x = augmented
        return x

    def adjust(self, real_sign_mean: float, images: int) -> None:
        """ADA's update after `images` real images (all ranks) with mean sign of D's logits r_t:
        p moves by sign(r_t - target) * images / (speed_kimg * 1000): toward less augmentation when
        r_t < target, more when above, not at all when on target."""
        if not self.adaptive:
            return
        step = images / (self.speed_kimg * 1000)
        # r_t is a mean of signs, so it can equal the target exactly (0.5 over 16 images)
        direction = float(real_sign_mean > self.target) - float(real_sign_mean < self.target)
        self.p = min(1.0, max(0.0, self.p + direction * step))

    def state_dict(self) -> dict:
        return {"p": self.p}

    def load_state_dict(self, state: dict) -> None:
        self.p = float(state["p"])
