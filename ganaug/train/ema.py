"""Exponential moving average of the generator's weights, with a warm-up.

Written here rather than with torch.optim.swa_utils.AveragedModel because it needs two things that
class does not give: the decay ramps up as min(decay, (1 + t) / (10 + t)) so early averages are not
dominated by the random initialisation, and the state dict is a plain generator's, so the exporter
loads it into the same class as the raw weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.module.parameters()), list(model.parameters()), 1.0 - decay)
        for mine, theirs in zip(self.module.buffers(), model.buffers()):
            mine.copy_(theirs)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


@torch.no_grad()
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
    for i in range(batches):
        generator(*sample_inputs(i))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    generator.train(was_training)
