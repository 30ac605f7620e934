"""The GAN objectives, apart from all machinery (no ranks, precision or optimizers here)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class GanLoss:
    """Non-saturating BCE (the seed's) or hinge, and the R1 penalty on real images."""

    def __init__(self, kind: str):
        if kind not in ("bce", "hinge"):
            raise ValueError(f"unknown GAN loss {kind!r}")
        self.kind = kind

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        real_logits, fake_logits = real_logits.float(), fake_logits.float()
        if self.kind == "bce":
            # maximise log D(x) + log(1 - D(G(z))) == minimise softplus(-D(x)) + softplus(D(G(z)))
            return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
        # hinge: minimise relu(1 - D(x)) + relu(1 + D(G(z)))
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        fake_logits = fake_logits.float()
        if self.kind == "bce":
            # non-saturating: maximise log D(G(z))
            return F.softplus(-fake_logits).mean()
        return -fake_logits.mean()

    @staticmethod
    def r1_penalty(real_images: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
        """||d D(x) / d x||^2 on real images (Mescheder et al., 2018); real_images must require grad."""
        (grad,) = torch.autograd.grad(real_logits.float().sum(), real_images, create_graph=True)
        return grad.float().square().sum(dim=(1, 2, 3)).mean()
