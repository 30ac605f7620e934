"""The module that is exported: the generator plus the post-processing of the ONNX contract.

Putting the post-processing in the graph means every runtime gets the same pixels without
re-implementing it: [-1, 1] float NCHW -> round((x + 1) * 127.5) clamped to 0..255 -> uint8 NHWC.
"""

from __future__ import annotations

import torch
from torch import nn

from ganaug.pixels import to_uint8

IMAGES = "images"  # the contract's output
FLOAT_IMAGES = "float_images"  # the generator's [-1, 1] output, exposed for verification only


def to_uint8_nhwc(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C]. Round is half-to-even in torch and in ONNX alike."""
    return to_uint8(x).permute(0, 2, 3, 1)


class ImageGenerator(nn.Module):
    """(z, labels) -> (images uint8 [N, H, W, C], float_images [N, C, H, W]).

    The second output lets the verification compare ONNX and PyTorch before the rounding to uint8
    hides small errors; it is removed from the graph before the model is written.
    """

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.generator(z, labels)
        return to_uint8_nhwc(x), x
