"""Mixed precision chosen once: an autocast context and one GradScaler per optimizer.

bf16 needs no loss scaling; fp16 does (GradScaler, enabled only for fp16). Knows nothing of GANs.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from ganaug.errors import UserError

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Does this device run bf16 matmuls natively (Ampere+ GPUs; AVX512-BF16 or AMX CPUs)?"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if name == "bf16" and not native_bf16(device):
        log.warning("train.precision=bf16: this %s has no native bf16 units; expect it to be slow", device.type)
    if name == "fp16" and device.type == "cpu":
        log.warning("train.precision=fp16 on CPU runs, but slowly; bf16 is the CPU's mixed precision")
    if name == "fp16" and device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("train.precision=fp16 needs a GPU")
    return name


class Precision:
    def __init__(self, name: str, device: torch.device):
        self.name = resolve_precision(name, device)
        self.dtype = DTYPES[self.name]
        self.device = device

    def autocast(self):
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling only for fp16 (its narrow exponent underflows gradients); a no-op otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")
