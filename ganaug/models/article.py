"""`model.arch=article28`: the 28x28 networks of the DCGAN article this project grew from.

G: Dense(z -> 7x7x256) -> ConvTranspose 5x5 to 128 (stride 1), 64 (stride 2), C (stride 2), with
BatchNorm + LeakyReLU between and tanh at the end. D: Conv 5x5 stride 2 to 64 and 128 with
LeakyReLU and dropout 0.3, then one linear layer. Unconditional, it is exactly that design;
conditional, G also takes a label embedding and D adds a projection term.
"""

from __future__ import annotations

import torch
from torch import nn

from ganaug.models.layers import Dropout, projection_logits


class ArticleGenerator(nn.Module):
    def __init__(self, z_dim: int, num_classes: int, channels: int, embed_dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        in_dim = z_dim + (embed_dim if num_classes else 0)
        self.project = nn.Sequential(nn.Linear(in_dim, 7 * 7 * 256, bias=False), nn.BatchNorm1d(7 * 7 * 256),
                                     nn.LeakyReLU(0.3))
        self.blocks = nn.Sequential(
            # 256 x 7 x 7 -> 128 x 7 x 7
            nn.ConvTranspose2d(256, 128, 5, 1, 2, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.3),
            # 128 x 7 x 7 -> 64 x 14 x 14
            nn.ConvTranspose2d(128, 64, 5, 2, 2, output_padding=1, bias=False), nn.BatchNorm2d(64), nn.LeakyReLU(0.3),
            # 64 x 14 x 14 -> C x 28 x 28
            nn.ConvTranspose2d(64, channels, 5, 2, 2, output_padding=1, bias=False), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels).to(z.dtype)], dim=1)
        return self.blocks(self.project(z).view(-1, 256, 7, 7))


class ArticleDiscriminator(nn.Module):
    def __init__(self, num_classes: int, channels: int):
        super().__init__()
        self.features = nn.Sequential(
            # C x 28 x 28 -> 64 x 14 x 14 -> 128 x 7 x 7
            nn.Conv2d(channels, 64, 5, 2, 2), nn.LeakyReLU(0.3), Dropout(0.3),
            nn.Conv2d(64, 128, 5, 2, 2), nn.LeakyReLU(0.3), Dropout(0.3),
        )
        self.head = nn.Linear(128 * 7 * 7, 1)
        self.embed = nn.Embedding(num_classes, 128 * 7 * 7) if num_classes else None

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None, return_parts: bool = False):
        # Flattened in (H, W, C) order: a free view of channels_last activations. (C, H, W) order would
        # copy them forward and send a contiguous gradient back into channels_last layers.
        h = self.features(images).permute(0, 2, 3, 1).flatten(1)
        return projection_logits(h, self.head, self.embed, labels, return_parts)
