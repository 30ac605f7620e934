"""Reduced-precision variants of an exported fp32 model: fp16 for GPUs, int8 for CPUs.

Both keep the contract's I/O (float32 z, int64 labels, uint8 images) and keep the post-processing
(scale, round, clamp, cast, transpose) in float32, so the only new error is the network's own.

fp16 (onnxconverter-common): float16 weights and arithmetic, casts at the edges. GPUs run it on
their half-precision units (tensor cores with TensorRT); CPUs mostly do not, so it is slower there.

int8 (onnxruntime static QDQ quantisation): int8 weights (per output channel) and uint8
activations whose ranges are calibrated on the generator's own activations, from random latents
and labels. onnxruntime's CPU provider fuses QDQ around Conv/Gemm into integer kernels that use
the VNNI / AMX int8 units of current x86 CPUs. Static, not dynamic, quantisation: ConvInteger,
which dynamic quantisation produces, has no fast kernel (docs/performance.md). What stays float,
and why:
- ConvTranspose: onnxruntime's CPU provider has no int8 ConvTranspose kernel; quantised, it only
  gains Quantize/Dequantize steps and error. A ConvTranspose generator (model.arch=seed or
  dcgan_tconv) therefore gains little from int8; the model card says so.
- the last layer (the convolution feeding tanh): 8 bits there show directly in the pixels, and it
  is the cheapest layer (a few output channels).
- BatchNormalization (left only where it cannot be folded) and the label embedding (a lookup):
  no int8 speed-up to be had.
Weights use 7 of their 8 bits (`reduce_range`): on x86 CPUs without VNNI (AVX2 only) onnxruntime's
u8s8 kernels add pairs of products in saturating 16-bit arithmetic, which full-range weights
overflow, and a model exported on a VNNI machine must run right on an AVX2 sampling host too
(docs/export.md has the errors measured with and without).
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import onnx

from ganaug.export.inputs import random_inputs
from ganaug.export.wrapper import FLOAT_IMAGES
from ganaug.models import ModelSpec

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 256
CALIBRATION_BATCH = 64
CALIBRATION_SEED = 20_240_601  # calibration latents differ from the verification ones
# Compute ops with int8 kernels, plus the cheap ops between them that can move int8 values as they
# are, so activations stay int8 from one convolution to the next (Relu folds into the quantiser).
INT8_OP_TYPES = ["Conv", "Gemm", "MatMul", "Relu", "Resize", "Reshape"]


def post_processing_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes downstream of the generator's float output: the contract's post-processing."""
    downstream, tensors = [], {FLOAT_IMAGES}
    for node in model.graph.node:  # topological order
        if tensors.intersection(node.input):
            downstream.append(node)
            tensors.update(node.output)
    assert downstream, "the model has no post-processing after its float output"
    return downstream


def last_layer(model: onnx.ModelProto) -> onnx.NodeProto:
    """The node whose output goes through tanh into the float images."""
    producers = {output: node for node in model.graph.node for output in node.output}
    tanh = producers[FLOAT_IMAGES]
    assert tanh.op_type == "Tanh", f"the float output comes from {tanh.op_type}, expected Tanh"
    return producers[tanh.input[0]]


def has_conv_transpose(model: onnx.ModelProto) -> bool:
    return any(node.op_type == "ConvTranspose" for node in model.graph.node)


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """float16 weights and arithmetic; float32/int64 inputs, outputs and post-processing kept."""
    from onnxconverter_common import float16

    keep_float32 = [node.name for node in post_processing_nodes(model)]
    with warnings.catch_warnings():
        # Weights below float16's range are flushed to its smallest value; the parity check
        # measures the effect that matters (on the images), so one note per weight is noise.
        warnings.filterwarnings("ignore", message=r"the float32 number .* will be truncated", category=UserWarning)
        return float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=keep_float32)


class _DropPreprocessingAdvice(logging.Filter):
    """onnxruntime advises, on the root logger, to pre-process first; it changes nothing for these
    graphs (see quantize_int8), so the advice would only confuse users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


class _CalibrationInputs:
    """onnxruntime's CalibrationDataReader protocol: feeds, batch by batch, then None."""

    def __init__(self, spec: ModelSpec, images: int, seed: int):
        self._batches = iter([random_inputs(spec, CALIBRATION_BATCH, seed + start)
                              for start in range(0, images, CALIBRATION_BATCH)])

    def get_next(self) -> dict | None:
        return next(self._batches, None)


def quantize_int8(model: onnx.ModelProto, spec: ModelSpec, calibration_images: int = CALIBRATION_IMAGES,
                  seed: int = CALIBRATION_SEED) -> onnx.ModelProto:
    """Static QDQ int8 (see the module docstring for what stays float and why)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    keep_float = [node.name for node in post_processing_nodes(model)]
    keep_float.append(last_layer(model).name)
    keep_float += [node.name for node in model.graph.node if node.op_type == "ConvTranspose"]
    # No quant_pre_process: the exporter's optimiser already folded BatchNorm into the convolutions,
    # and pre-processing these graphs gives an identical node list, only later.
    with tempfile.TemporaryDirectory(prefix="ganaug-quantize-") as tmp:
        # quantize_static takes file paths: given a ModelProto, it rewrites it to external data in place.
        fp32_path, int8_path = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
        onnx.save(model, fp32_path)
        advice_filter = _DropPreprocessingAdvice()
        logging.getLogger().addFilter(advice_filter)
        try:
            quantize_static(
                fp32_path, int8_path, _CalibrationInputs(spec, calibration_images, seed),
                quant_format=QuantFormat.QDQ, calibrate_method=CalibrationMethod.MinMax,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                op_types_to_quantize=INT8_OP_TYPES, nodes_to_exclude=keep_float, reduce_range=True,
            )
        finally:
            logging.getLogger().removeFilter(advice_filter)
        return onnx.load(int8_path)
