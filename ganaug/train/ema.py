"""Exponential moving average of the generator's weights, with its horizon measured in images.

`train.ema_decay` is the decay per 64 training images, so the averaging horizon (half-life
64 * ln 0.5 / ln decay images: 44k for 0.999) is the same whatever the batch size and the number
of processes; a step of B images decays by ema_decay ** (B / 64). With a ramp-up (StyleGAN2-ADA's,
`train.ema_rampup`) the half-life is at most that share of the images seen so far, so the early
average is not dominated by the random initialisation.

Written here rather than with torch.optim.swa_utils.AveragedModel because the state dict must be
a plain generator's (the exporter loads it into the same class as the raw weights) and the decay
depends on the images seen, not on a step count.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

REFERENCE_IMAGES = 64  # the batch that `train.ema_decay` is quoted for


def half_life_images(decay_per_reference: float) -> float:
    return REFERENCE_IMAGES * math.log(0.5) / math.log(decay_per_reference)


def ema_beta(decay_per_reference: float, rampup: float, batch_images: int, images_seen: int) -> float:
    """The decay of one update of `batch_images` images, after `images_seen` images (all ranks)."""
    half_life = half_life_images(decay_per_reference)
    if rampup > 0:
        half_life = min(half_life, images_seen * rampup)
    return 0.5 ** (batch_images / half_life) if half_life > 0 else 0.0


class EMA:
    def __init__(self, model: nn.Module, decay: float, rampup: float = 0.0):
        self.decay, self.rampup = decay, rampup
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def update(self, model: nn.Module, batch_images: int, images_seen: int) -> None:
        """Average in `model` after a step of `batch_images` images, `images_seen` before it."""
        beta = ema_beta(self.decay, self.rampup, batch_images, images_seen)
        # A with-block, not a decorator: mutmut does not mutate decorated functions (docs/reliability.md).
        with torch.no_grad():
            torch._foreach_lerp_(list(self.module.parameters()), list(model.parameters()), 1.0 - beta)
            for mine, theirs in zip(self.module.buffers(), model.buffers()):
                mine.copy_(theirs)


def recalibrate_batchnorm(generator: nn.Module, sample_inputs, batches: int = 8) -> None:
    """Re-estimate BatchNorm statistics for these weights ("standing statistics", Brock et al., 2019).

    The running statistics an averaged generator inherits were measured on other weights; a few
    forward passes in train mode with cumulative averaging give ones that match. `sample_inputs(i)`
    returns the (z, labels) of batch i from a private RNG, so training's random stream is untouched.
    """
    norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = generator.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    generator.train()
    with torch.no_grad():
        for i in range(batches):
            generator(*sample_inputs(i))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    generator.train(was_training)
