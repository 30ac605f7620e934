"""A class-conditional DCGAN family that scales with the resolution.

G upsamples by nearest-neighbour resize + 3x3 convolution by default: no checkerboard artefacts
(Odena et al., 2016), and plain convolutions are what onnxruntime's int8 kernels accelerate
(a ConvTranspose stays in float when quantised). D downsamples with strided convolutions and is
conditioned by projection (Miyato & Koyama, 2018), with optional spectral normalisation.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as sn

from ganaug.models import base_resolution
from ganaug.models.layers import projection_logits

MAX_CHANNELS = 256


def _widths(width: int, levels: int) -> list[int]:
    """Channels per resolution level, widest at the coarsest: width * 2**k, capped."""
    return [min(width * 2 ** (levels - i), MAX_CHANNELS) for i in range(levels + 1)]


class Generator(nn.Module):
    def __init__(self, z_dim: int, num_classes: int, channels: int, resolution: int, width: int,
                 embed_dim: int, upsample: str = "resize"):
        super().__init__()
        base, ups = base_resolution(resolution)
        widths = _widths(width, ups)
        self.z_dim, self.num_classes, self.base, self.widths = z_dim, num_classes, base, widths
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        in_dim = z_dim + (embed_dim if num_classes else 0)
        # (z ++ embed(y)) -> (widths[0]) x base x base
        self.project = nn.Sequential(nn.Linear(in_dim, widths[0] * base * base, bias=False))
        self.project_norm = nn.Sequential(nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        blocks = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            if upsample == "resize":  # (c_in) x s x s -> (c_out) x 2s x 2s
                up = [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)]
            else:
                up = [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)]
            blocks += [*up, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.blocks = nn.Sequential(*blocks)
        # (widths[-1]) x resolution x resolution -> (channels) x resolution x resolution, in [-1, 1]
        self.to_image = nn.Sequential(nn.Conv2d(widths[-1], channels, 3, 1, 1), nn.Tanh())

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels).to(z.dtype)], dim=1)
        x = self.project(z).view(z.shape[0], self.widths[0], self.base, self.base)
        return self.to_image(self.blocks(self.project_norm(x)))


class Discriminator(nn.Module):
    def __init__(self, num_classes: int, channels: int, resolution: int, width: int, spectral_norm: bool = True):
        super().__init__()
        base, downs = base_resolution(resolution)
        widths = list(reversed(_widths(width, downs)))  # narrowest at full resolution
        norm = sn if spectral_norm else (lambda layer: layer)
        layers = [norm(nn.Conv2d(channels, widths[0], 3, 1, 1)), nn.LeakyReLU(0.2, inplace=True)]
        for c_in, c_out in zip(widths[:-1], widths[1:]):  # (c_in) x 2s x 2s -> (c_out) x s x s
            layers += [norm(nn.Conv2d(c_in, c_out, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True)]
        self.features = nn.Sequential(*layers, nn.Flatten())
        feature_dim = widths[-1] * base * base
        self.head = norm(nn.Linear(feature_dim, 1))
        # Projection conditioning: logit += <embed(y), features>
        self.embed = norm(nn.Embedding(num_classes, feature_dim)) if num_classes else None

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None, return_parts: bool = False):
        return projection_logits(self.features(images), self.head, self.embed, labels, return_parts)
