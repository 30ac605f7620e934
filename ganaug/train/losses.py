"""The GAN loss formulas and regularisers as pure functions of logits and images.

No ranks, precision, optimizers or schedules here (train/objective.py decides when and how much
of each to apply). Every function works in float32 whatever the autocast dtype of the logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def discriminator_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    if kind == "bce":
        # maximise log D(x) + log(1 - D(G(z))) == minimise softplus(-D(x)) + softplus(D(G(z)))
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        # minimise relu(1 - D(x)) + relu(1 + D(G(z)))
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    raise ValueError(f"unknown GAN loss {kind!r}")


def generator_loss(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    fake_logits = fake_logits.float()
    if kind == "bce":
        return F.softplus(-fake_logits).mean()  # non-saturating: maximise log D(G(z))
    if kind == "hinge":
        return -fake_logits.mean()
    raise ValueError(f"unknown GAN loss {kind!r}")


def r1_penalty(real_images: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """E ||d D(x) / d x||^2 over real images (Mescheder et al., 2018); real_images must require grad
    and be where the gradient is taken (the images before augmentation, as StyleGAN2-ADA does)."""
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_images, create_graph=True)
    return grad.float().square().sum(dim=tuple(range(1, grad.dim()))).mean()


def lecam_penalty(real_logits: torch.Tensor, fake_logits: torch.Tensor, real_anchor: float,
                  fake_anchor: float) -> torch.Tensor:
    """LeCam regularisation (Tseng et al., 2021): keeps D's real scores from running away above the
    moving average of its fake scores, and its fake scores below that of its real scores."""
    return (F.relu(real_logits.float() - fake_anchor).square().mean()
            + F.relu(real_anchor - fake_logits.float()).square().mean())


def consistency_penalty(logits: torch.Tensor, logits_again: torch.Tensor) -> torch.Tensor:
    """Consistency regularisation (bCR, Zhao et al., 2020): D should score two augmentations of the
    same images alike."""
    return (logits.float() - logits_again.float()).square().mean()


def mode_seeking_penalty(images: torch.Tensor, latents: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mode seeking (MSGAN, Mao et al., 2019): the first half of the batch is paired with the second
    half, each pair of one class and two latents; the penalty falls as the images of a pair move
    apart relative to their latents, so G cannot map many latents to one image of a class."""
    half = len(images) // 2
    image_distance = (images[:half].float() - images[half: 2 * half].float()).abs().mean()
    latent_distance = (latents[:half].float() - latents[half: 2 * half].float()).abs().mean()
    return 1.0 / (image_distance / latent_distance + eps)
