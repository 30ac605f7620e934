"""Pieces the networks share: projection conditioning, and layers where torch's own is slow on CPUs."""

from __future__ import annotations

import torch
from torch import nn

_INT16_STATES = 1 << 16


class Dropout(nn.Dropout):
    """nn.Dropout whose CPU mask is drawn 16 bits per element, four elements per 64-bit random number.

    On CPU, `bernoulli_` (behind nn.Dropout) draws one random number per element serially, which
    made it a large share of the article28 discriminator's step (docs/performance.md has the
    profile); a mask from whole 64-bit draws needs a quarter of the draws. The keep probability is
    rounded to a multiple of 1/65536 (0.7 -> 0.699997). GPUs keep torch's fused kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        keep = 1.0 - self.p
        # The mask in x's dtype, pre-scaled: x * bool would convert the mask in forward and backward.
        scale = _keep_mask(x, keep).to(x.dtype).mul_(1.0 / keep)
        return x * scale


def _keep_mask(x: torch.Tensor, keep: float) -> torch.Tensor:
    """A bool tensor shaped (and laid out) like x, each element True with probability `keep`."""
    n = x.numel()
    # random_ over the full int64 range: its default range leaves the sign bit of every draw at 0.
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(1 << 63), None)
    halves = words.view(torch.int16)[:n]
    # The mask takes x's strides (channels_last included) so the multiply walks both in step.
    dense = x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))
    halves = halves.as_strided(x.shape, x.stride()) if dense else halves.view(x.shape)
    return halves < round(keep * _INT16_STATES) - _INT16_STATES // 2


def projection_logits(features: torch.Tensor, head: nn.Module, embed: nn.Module | None, labels: torch.Tensor | None,
                      return_parts: bool = False):
    """A projection discriminator's output (Miyato & Koyama, 2018): head(h) + <embed(y), h>.

    A label of -1 means "no label": that image gets no projection term (the semi-supervised
    objective scores unlabelled images so). With return_parts, (head(h), projection term or None).
    """
    unconditional = head(features).squeeze(1)
    projection = None
    if embed is not None and labels is not None:
        known = labels >= 0
        projection = (embed(labels.clamp(min=0)) * features).sum(1) * known.to(features.dtype)
    if return_parts:
        return unconditional, projection
    return unconditional if projection is None else unconditional + projection
