"""The one mapping between stored pixels and network values: uint8 0..255 <-> float [-1, 1].

The trainer feeds real images through `to_unit`, the exported generator ends in `to_uint8` (so every
runtime gets the same pixels), and the classifier's ONNX graph starts with `to_unit`: the three must
agree to the last rounding, so they share these two lines.
"""

from __future__ import annotations

import torch


def to_unit(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 in [-1, 1], any layout."""
    return images_u8.to(torch.float32).div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 0..255, any layout; rounding is half-to-even in torch and ONNX alike."""
    return torch.round((x + 1) * 127.5).clamp(0, 255).to(torch.uint8)
