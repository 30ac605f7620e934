"""This machine's measured matrix-multiply peak: fp32 and bf16 (torch), int8 (onnxruntime)."""

from __future__ import annotations

import time

import numpy as np
import torch


def _best_rate(run, flops: float, repeats: int) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return flops / best


def torch_matmul_flops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    return _best_rate(lambda: torch.mm(a, b), 2.0 * size**3, repeats)


def ort_int8_matmul_ops(size: int = 2048, repeats: int = 5) -> float:
    """MatMulInteger (uint8 x int8 -> int32) in onnxruntime: what int8 generator inference runs on."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    b = np.random.default_rng(0).integers(-127, 127, (size, size), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "int8_peak",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [size, size])],
        [onnx.numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a = np.random.default_rng(1).integers(0, 255, (size, size), dtype=np.uint8)
    return _best_rate(lambda: session.run(None, {"a": a}), 2.0 * size**3, repeats)


def bench_peaks(bf16: bool) -> dict:
    """The peaks; bf16 only where the CPU has bf16 units (emulated, it is no peak of anything)."""
    peaks = {"fp32": torch_matmul_flops(torch.float32) / 1e9, "int8_ort": ort_int8_matmul_ops() / 1e9}
    if bf16:
        peaks["bf16"] = torch_matmul_flops(torch.bfloat16) / 1e9
    return {"matmul_peak_gflops": peaks}
