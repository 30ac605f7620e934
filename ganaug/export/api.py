"""Export as a library, behind `ganaug export`: checkpoint -> generator -> ONNX -> verified (-> fp16 / int8, verified) -> one file.

Order matters: everything the user can get wrong is checked before the (slow) export, and the
file appears only after every check passed, atomically.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ganaug.errors import UserError
from ganaug.export.metadata import attach_metadata, model_metadata
from ganaug.export.onnx_export import check_opset, drop_output, export_onnx
from ganaug.export.output import OutputFile
from ganaug.export.reduce import convert_to_fp16, has_conv_transpose, quantize_int8
from ganaug.export.source import load_generator
from ganaug.export.verify import ParityReport, check_model, verify_parity, verify_same_images
from ganaug.export.wrapper import FLOAT_IMAGES, ImageGenerator
from ganaug.train.checkpoint import resolve_source

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
INT8_CONV_TRANSPOSE_NOTE = ("this generator upsamples with ConvTranspose, which onnxruntime runs in float "
                            "even in the int8 model: int8 cannot speed it up much; ship fp32 to CPUs")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    precision: str
    size_bytes: int
    reports: list[ParityReport]  # fp32 first, then the reduced precision if any
    seconds: float

    def summary(self) -> str:
        report = self.reports[-1]
        return (f"wrote {self.path} ({self.precision}, {self.size_bytes / 1024:.1f} KiB) in {self.seconds:.1f} s; "
                f"max error {report.max_error:.3g} grey levels vs PyTorch fp32 (mean {report.mean_error:.3g}, "
                f"FD {report.fd:.3g})")


def export_model(source: str | Path, out: str | Path, precision: str = "fp32", weights: str = "ema",
                 opset: int | None = None, force: bool = False, allow_degraded: bool = False) -> ExportResult:
    """Export a run's (or checkpoint's) generator to one verified ONNX file at `out`."""
    started = time.perf_counter()
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    opset = check_opset(opset)
    checkpoint = resolve_source(source)
    output = OutputFile(out, force)
    if output.path.exists() and output.path.samefile(checkpoint):
        raise UserError(f"--out {output.path} is the checkpoint being exported")
    loaded = load_generator(checkpoint, weights)
    module = ImageGenerator(loaded.generator).eval()
    verified = export_onnx(module, loaded.spec, opset)
    check_model(verified)
    reports = [verify_parity(verified, module, loaded.spec, "fp32")]
    note = None
    if precision != "fp32":
        if precision == "int8" and has_conv_transpose(verified):
            note = INT8_CONV_TRANSPOSE_NOTE
            log.warning("%s", note)
        verified = convert_to_fp16(verified) if precision == "fp16" else quantize_int8(verified, loaded.spec)
        check_model(verified)
        reports.append(verify_parity(verified, module, loaded.spec, precision, allow_degraded))
    final = drop_output(verified, FLOAT_IMAGES)
    attach_metadata(final, model_metadata(loaded, precision, opset, reports, note))
    check_model(final)
    verify_same_images(final, verified, loaded.spec)
    data = final.SerializeToString()
    output.commit(data)
    return ExportResult(output.path, precision, len(data), reports, time.perf_counter() - started)
