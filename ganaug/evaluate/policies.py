"""Classical augmentation policies for the downstream classifier: what practitioners use today.

Each policy maps a float batch [N, C, H, W] in [0, 1] to an augmented batch of the same shape, one
random draw per image. torchvision's transforms do the work; they draw from torch's global RNG,
which `train_classifier` seeds, so a seed still gives the same classifier.

- affine: one random rotation, shift, scale and shear per image (the study's warp, batched).
- elastic: the elastic distortion that is standard for handwriting (Simard et al. 2003), then the
  affine warp, both batched.
- trivialaugment: torchvision's TrivialAugmentWide (Müller and Hutter 2021), one random op of a
  random strength per image, then cutout (RandomErasing).
- randaugment: torchvision's RandAugment (Cubuk et al. 2020; 2 ops at magnitude 9), then cutout.

Which one is best depends on the images: `ganaug augment --policy auto` picks one on the user's own
labelled images by cross-validation (docs/augment.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

POLICIES = ("affine", "elastic", "trivialaugment", "randaugment")
# Candidates of `--policy auto`: one cheap batched warp, one per-image shape distortion, one
# automated policy. RandAugment is left out of auto: it is TrivialAugment's older sibling.
AUTO_POLICIES = ("affine", "elastic", "trivialaugment")


def random_affine(images: torch.Tensor, generator: torch.Generator, max_rotate_deg: float = 12.0,
                  max_shift: float = 0.12, scale_range: float = 0.1, max_shear_deg: float = 8.0) -> torch.Tensor:
    """A random rotation, shift, scale and shear per image, in one warp.

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


def elastic(images: torch.Tensor, generator: torch.Generator, alpha: float, sigma: float) -> torch.Tensor:
    """Elastic distortion (Simard et al. 2003), one field per image in one batched warp: uniform
    displacements in [-1, 1] pixels, smoothed by a Gaussian of `sigma` pixels, scaled by `alpha`.
    torchvision's ElasticTransform draws one field per call, so per image it costs a call each
    (3.5x the whole classifier step here); its blur is used for the smoothing."""
    from torchvision.transforms.v2.functional import gaussian_blur

    n, _, height, width = images.shape
    noise = torch.rand(n, 2, height, width, generator=generator) * 2 - 1
    kernel = 2 * math.ceil(3 * sigma) + 1  # +-3 sigma
    field = gaussian_blur(noise, [kernel, kernel], [sigma, sigma]) * alpha  # pixels
    # pixels -> grid_sample's [-1, 1] coordinates (align_corners=False: the side spans 2)
    offset = field.permute(0, 2, 3, 1) * torch.tensor([2 / width, 2 / height])
    identity = F.affine_grid(torch.eye(2, 3).expand(n, 2, 3), [n, 1, height, width], align_corners=False)
    grid = (identity + offset).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _per_image(transform: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """torchvision's v2 transforms draw one set of parameters per call: call them once per image."""

    def apply(images: torch.Tensor) -> torch.Tensor:
        return torch.stack([transform(image) for image in images])

    return apply


def _uint8_policy(policy) -> Callable[[torch.Tensor], torch.Tensor]:
    """TrivialAugment and RandAugment are defined on uint8 images (posterize, solarize, equalize)."""
    from torchvision.transforms import v2

    per_image = _per_image(v2.Compose([policy, v2.ToDtype(torch.float32, scale=True), v2.RandomErasing(p=0.5)]))

    def apply(images: torch.Tensor) -> torch.Tensor:
        return per_image(images.mul(255).round().to(torch.uint8))

    return apply


def build_policy(name: str, image_side: int) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """The policy `name` for images of `image_side` pixels: f(images float [N, C, H, W] in [0, 1],
    generator) -> images of the same shape and range."""
    from torchvision.transforms import v2

    if name == "affine":
        return random_affine
    if name == "elastic":
        # alpha 34 and sigma 4 are the usual values for 28 px digits (Simard et al.); scaled to the side.
        return lambda images, generator: random_affine(
            elastic(images, generator, alpha=34.0 * image_side / 28, sigma=4.0 * image_side / 28), generator)
    if name == "trivialaugment":
        policy = _uint8_policy(v2.TrivialAugmentWide())
    elif name == "randaugment":
        policy = _uint8_policy(v2.RandAugment(num_ops=2, magnitude=9))
    else:
        raise ValueError(f"unknown augmentation policy {name!r}; one of {', '.join(POLICIES)}")
    return lambda images, generator: policy(images)
