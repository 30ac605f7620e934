"""`model.arch=resnet`: a residual class-conditional GAN in the style of SNGAN / BigGAN.

G (Brock et al., 2019, without self-attention or hierarchical latents):
  z -> linear -> (widths[0]) x base x base
    -> up-blocks: cBN -> ReLU -> 2x nearest resize -> 3x3 conv -> cBN -> ReLU -> 3x3 conv,
                  plus a shortcut (2x nearest resize -> 1x1 conv)
    -> BN -> ReLU -> 3x3 conv -> tanh
The label enters only through the class-conditional BatchNorms (cBN): one label embedding, shared
by the whole network, is projected by each cBN into its per-channel gain (1 + gamma) and bias.
Upsampling is resize + convolution only, so the generator exports and int8-quantises like `dcgan`
(no ConvTranspose), and the float output comes from the final tanh, as the exporter expects.

D (Miyato et al., 2018; Miyato & Koyama, 2018): residual down-blocks (ReLU -> 3x3 conv -> ReLU ->
3x3 conv -> 2x2 average pool, shortcut 1x1 conv -> average pool), the first one "optimised" (no
ReLU on the input image, pooling before its shortcut convolution), a last block without pooling at
the base resolution, then ReLU, global sum pooling, a linear head and the projection term
<embed(y), h>. Spectral normalisation on every layer when model.spectral_norm is on.

Widths follow `dcgan`: model.g_channels / model.d_channels are the channels at full resolution,
doubled at each coarser level, capped at MAX_CHANNELS.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as sn

from ganaug.models import base_resolution
from ganaug.models.dcgan import _widths
from ganaug.models.layers import projection_logits


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose per-channel gain and bias are linear functions of a conditioning vector.

    y = BN(x) * (1 + gamma(c)) + beta(c), with BN's own affine off; gamma and beta are linear maps
    of c initialised at zero, so an untrained cBN starts as a plain BatchNorm. With cond_dim = 0
    (an unconditional generator) it is an ordinary affine BatchNorm and ignores c.
    """

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=cond_dim == 0)
        if cond_dim:
            self.gain = nn.Linear(cond_dim, channels, bias=False)
            self.bias = nn.Linear(cond_dim, channels, bias=False)
            nn.init.zeros_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)
        else:
            self.gain = self.bias = None

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        x = self.norm(x)
        if self.gain is None:
            return x
        gain = self.gain(cond).to(x.dtype)[:, :, None, None]
        bias = self.bias(cond).to(x.dtype)[:, :, None, None]
        return x * (1 + gain) + bias


class GBlock(nn.Module):
    """(c_in) x s x s -> (c_out) x 2s x 2s, residual."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int):
        super().__init__()
        self.norm1 = ConditionalBatchNorm2d(c_in, cond_dim)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.norm2 = ConditionalBatchNorm2d(c_out, cond_dim)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = F.relu(self.norm1(x, cond))
        h = self.conv1(_upsample(h))
        h = self.conv2(F.relu(self.norm2(h, cond)))
        return h + self.shortcut(_upsample(x))


def _upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class ResNetGenerator(nn.Module):
    def __init__(self, z_dim: int, num_classes: int, channels: int, resolution: int, width: int, embed_dim: int):
        super().__init__()
        base, ups = base_resolution(resolution)
        widths = _widths(width, ups)
        self.z_dim, self.num_classes, self.base, self.widths = z_dim, num_classes, base, widths
        # The shared class embedding every cBN projects from (BigGAN's "shared embedding").
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        cond_dim = embed_dim if num_classes else 0
        # z -> (widths[0]) x base x base
        self.project = nn.Linear(z_dim, widths[0] * base * base)
        # (c_in) x s x s -> (c_out) x 2s x 2s, up to (widths[-1]) x resolution x resolution
        self.blocks = nn.ModuleList(GBlock(c_in, c_out, cond_dim) for c_in, c_out in zip(widths[:-1], widths[1:]))
        # -> (channels) x resolution x resolution, in [-1, 1]
        self.to_image = nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.ReLU(), nn.Conv2d(widths[-1], channels, 3, 1, 1),
                                      nn.Tanh())

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cond = self.embed(labels) if self.embed is not None else None
        x = self.project(z).view(z.shape[0], self.widths[0], self.base, self.base)
        for block in self.blocks:
            x = block(x, cond)
        return self.to_image(x)


class DBlock(nn.Module):
    """(c_in) x 2s x 2s -> (c_out) x s x s (or x 2s x 2s without `down`), residual.

    `first`: SNGAN's optimised block for the input image, which takes no ReLU before its first
    convolution and pools before its shortcut convolution (the cheaper order, same function).
    """

    def __init__(self, c_in: int, c_out: int, down: bool, first: bool, norm):
        super().__init__()
        self.down, self.first = down, first
        self.conv1 = norm(nn.Conv2d(c_in, c_out, 3, 1, 1))
        self.conv2 = norm(nn.Conv2d(c_out, c_out, 3, 1, 1))
        self.shortcut = norm(nn.Conv2d(c_in, c_out, 1)) if c_in != c_out or down else None

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2) if self.down else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x if self.first else F.relu(x))
        h = self._pool(self.conv2(F.relu(h)))
        if self.shortcut is None:
            return h + x
        skip = self.shortcut(self._pool(x)) if self.first else self._pool(self.shortcut(x))
        return h + skip


class ResNetDiscriminator(nn.Module):
    def __init__(self, num_classes: int, channels: int, resolution: int, width: int, spectral_norm: bool = True):
        super().__init__()
        base, downs = base_resolution(resolution)
        widths = list(reversed(_widths(width, downs)))  # narrowest at full resolution
        norm = sn if spectral_norm else (lambda layer: layer)
        # (channels) x r x r -> (widths[0]) x r/2 x r/2 -> ... -> (widths[-2]) x base x base
        blocks = [DBlock(channels, widths[0], down=True, first=True, norm=norm)]
        blocks += [DBlock(c_in, c_out, down=True, first=False, norm=norm)
                   for c_in, c_out in zip(widths[:-2], widths[1:-1])]
        # -> (widths[-1]) x base x base
        blocks.append(DBlock(widths[-2], widths[-1], down=False, first=False, norm=norm))
        self.blocks = nn.Sequential(*blocks)
        self.head = norm(nn.Linear(widths[-1], 1))
        # Projection conditioning: logit += <embed(y), features>
        self.embed = norm(nn.Embedding(num_classes, widths[-1])) if num_classes else None

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """[N, widths[-1]]: ReLU and global sum pooling over the last block's positions."""
        return F.relu(self.blocks(images)).sum(dim=(2, 3))

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None, return_parts: bool = False):
        return projection_logits(self.features(images), self.head, self.embed, labels, return_parts)
