"""Verification before anything is written: the ONNX checker, then onnxruntime against PyTorch.

Every model (fp32, fp16, int8) runs in onnxruntime on the same random inputs as the PyTorch fp32
generator, at several batch sizes (1, an odd one, a large one: the batch axis is dynamic). They
are compared on the float images, before the rounding to uint8 would hide small errors, in grey
levels (1 = one step of the 0..255 output). Figures:

- max_error, mean_error: |onnx - torch| over all pixels, in grey levels.
- max_pixel_diff: the same on the uint8 images the model outputs (rounding may flip a level).
- fd: Fréchet distance between the two sets of images on a simple feature per image, in grey
  levels^2 (see distance.py).

Thresholds (THRESHOLDS, documented in docs/export.md): fp32 must match PyTorch up to float
rounding; fp16 and int8 get budgets measured on trained generators with headroom. Beyond them the
export fails (VerificationError, exit status 2, nothing written) unless degraded output is
explicitly allowed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ganaug.errors import UserError
from ganaug.export.distance import image_distance
from ganaug.export.inputs import random_inputs
from ganaug.export.wrapper import FLOAT_IMAGES, IMAGES, ImageGenerator
from ganaug.models import ModelSpec
from ganaug.sampler.runtime import cpu_session

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 7, 256)
VERIFY_SEED = 1_000_003
GREY_LEVELS_PER_UNIT = 127.5  # [-1, 1] -> 0..255


@dataclass(frozen=True)
class Thresholds:
    max_error: float  # grey levels
    mean_error: float  # grey levels
    fd: float  # grey levels^2


THRESHOLDS = {
    # Float rounding only: kernels differ (oneDNN vs MLAS), the arithmetic does not.
    "fp32": Thresholds(max_error=0.05, mean_error=0.005, fd=0.01),
    # float16 keeps ~3 significant digits: measured ~0.02 mean / <1 max grey level.
    "fp16": Thresholds(max_error=4.0, mean_error=0.25, fd=0.5),
    # 8-bit activations: measured 0.4..1.0 mean; single pixels can be off by ~5-30 levels.
    "int8": Thresholds(max_error=64.0, mean_error=2.0, fd=4.0),
}


class VerificationError(UserError):
    """An exported model does not reproduce the PyTorch generator within its thresholds."""


@dataclass(frozen=True)
class ParityReport:
    precision: str
    batch_sizes: tuple[int, ...]
    images: int
    max_error: float
    mean_error: float
    max_pixel_diff: int
    fd: float
    thresholds: Thresholds
    within_thresholds: bool

    def to_dict(self) -> dict:
        values = asdict(self)
        values["batch_sizes"] = list(self.batch_sizes)
        values["reference"] = "pytorch fp32"
        values["units"] = "grey levels (0..255); fd in grey levels^2"
        return values

    def summary(self) -> str:
        return (f"{self.precision} vs PyTorch fp32 on {self.images} images (batches {self.batch_sizes}): "
                f"max error {self.max_error:.4g}, mean {self.mean_error:.4g} grey levels, "
                f"uint8 max diff {self.max_pixel_diff}, FD {self.fd:.3g}")


def to_grey(float_images: np.ndarray) -> np.ndarray:
    """[-1, 1] -> 0..255 grey levels (float64, not rounded)."""
    return (float_images.astype(np.float64) + 1) * GREY_LEVELS_PER_UNIT


def check_model(model: onnx.ModelProto) -> None:
    """The ONNX checker with full_check (type and shape inference on every node)."""
    onnx.checker.check_model(model, full_check=True)


def verification_session(model: onnx.ModelProto) -> ort.InferenceSession:
    """The model on onnxruntime's CPU provider, set up as the sampler will run it."""
    return cpu_session(model.SerializeToString())


def run_torch_reference(module: ImageGenerator, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch fp32 (images uint8 NHWC, float images NCHW) for the same feeds as onnxruntime."""
    labels = torch.from_numpy(feeds["labels"]) if "labels" in feeds else None
    with torch.inference_mode():
        images, float_images = module(torch.from_numpy(feeds["z"]), labels)
    return images.numpy(), float_images.numpy()


def run_onnxruntime(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    images, float_images = session.run([IMAGES, FLOAT_IMAGES], feeds)
    return images, float_images


def verify_parity(model: onnx.ModelProto, module: ImageGenerator, spec: ModelSpec, precision: str,
                  allow_degraded: bool = False, batch_sizes: tuple[int, ...] = BATCH_SIZES) -> ParityReport:
    """Compare `model` in onnxruntime with PyTorch fp32; raise VerificationError beyond THRESHOLDS."""
    session = verification_session(model)
    torch_floats, onnx_floats, pixel_diff = [], [], 0
    for batch in batch_sizes:
        feeds = random_inputs(spec, batch, VERIFY_SEED + batch)
        torch_images, torch_float = run_torch_reference(module, feeds)
        onnx_images, onnx_float = run_onnxruntime(session, feeds)
        if onnx_images.shape != torch_images.shape or onnx_images.dtype != np.uint8:
            raise VerificationError(f"{precision} model output is {onnx_images.dtype} {list(onnx_images.shape)} "
                                    f"for batch {batch}; PyTorch gives uint8 {list(torch_images.shape)}")
        pixel_diff = max(pixel_diff, int(np.abs(onnx_images.astype(np.int16) - torch_images).max()))
        torch_floats.append(torch_float)
        onnx_floats.append(onnx_float)
    reference, candidate = (to_grey(np.concatenate(floats)) for floats in (torch_floats, onnx_floats))
    limits = THRESHOLDS[precision]
    figures = image_distance(reference, candidate)
    within = all(np.isfinite(value) and value <= getattr(limits, name) for name, value in figures.items())
    # Rounding can flip a level even when the float images agree, never more than one.
    within = within and (precision != "fp32" or pixel_diff <= 1)
    report = ParityReport(precision, tuple(batch_sizes), len(reference), max_pixel_diff=pixel_diff,
                          thresholds=limits, within_thresholds=within, **figures)
    log.info("parity: %s", report.summary())
    if not within:
        message = (f"{report.summary()}; thresholds: max {limits.max_error}, mean {limits.mean_error}, "
                   f"FD {limits.fd}")
        if precision == "fp32" or not allow_degraded:
            hint = "" if precision == "fp32" else " (--allow-degraded writes it anyway)"
            raise VerificationError(f"parity check failed: {message}{hint}")
        log.warning("degraded model written because of --allow-degraded: %s", message)
    return report


def verify_same_images(final: onnx.ModelProto, verified: onnx.ModelProto, spec: ModelSpec) -> None:
    """The model to be written (verification output removed, metadata added) gives the verified images."""
    feeds = random_inputs(spec, 7, VERIFY_SEED)
    expected = verification_session(verified).run([IMAGES], feeds)[0]
    written = verification_session(final).run([IMAGES], feeds)[0]
    assert np.array_equal(expected, written), "removing the verification output changed the images"
