"""Tiny contract-conforming ganaug ONNX models, built with onnx.helper (no torch, no training).

The graph follows "The ONNX model" in the design:

    images = Reshape(Cast(Round(Clip((Tanh(MatMul(z, W) [+ Gather(E, labels)]) + 1) * 127.5, 0, 255))))

so every pixel depends on the latent and (when conditional) the label, which lets the tests check
determinism and labels on real values. `conv_layers` adds 3x3 convolutions before the output to make
inference cost closer to a real generator (used by the throughput measurement).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# onnxruntime 1.31 reads IR versions up to 13; onnx 1.23 writes 14 unless told otherwise.
IR_VERSION = 8
OPSET = 17


def default_meta(z_dim: int, num_classes: int, class_names: list[str], shape: tuple[int, int, int]) -> dict:
    return {
        "ganaug.schema": "1",
        "ganaug.z_dim": str(z_dim),
        "ganaug.num_classes": str(num_classes),
        "ganaug.class_names": json.dumps(class_names),
        "ganaug.image_shape": json.dumps(list(shape)),
        "ganaug.precision": "fp32",
        "ganaug.train_step": "1234",
        "ganaug.checkpoint_sha256": "0" * 64,
    }


def make_model(
    path,
    z_dim: int = 8,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    shape: tuple[int, int, int] = (8, 8, 1),
    conditional: bool = True,
    meta_overrides: dict | None = None,
    output_dtype: int = TensorProto.UINT8,
    output_rank: int = 4,
    conv_layers: int = 0,
    conv_channels: int = 16,
    seed: int = 0,
) -> str:
    """Write a ganaug ONNX model to `path` and return the path as a string.

    num_classes: defaults to len(class_names), or 3 when no names are given.

    meta_overrides: metadata keys to replace; a value of None removes the key.
    output_dtype / output_rank: break the output contract on purpose (float output, flat output).
    """
    if num_classes is None:
        num_classes = len(class_names) if class_names is not None else 3
    if class_names is None:
        class_names = [f"class{i}" for i in range(num_classes)] if conditional else []
    height, width, channels = shape
    pixels = height * width * channels
    rng = np.random.default_rng(seed)
    initializers = [
        numpy_helper.from_array(
            (rng.standard_normal((z_dim, pixels)) / np.sqrt(z_dim)).astype(np.float32), "W"
        ),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(127.5, np.float32), "half_range"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(255.0, np.float32), "hi"),
    ]
    inputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", z_dim])]
    nodes = [helper.make_node("MatMul", ["z", "W"], ["h"])]
    pre_activation = "h"
    if conditional:
        inputs.append(helper.make_tensor_value_info("labels", TensorProto.INT64, ["N"]))
        embedding = rng.standard_normal((max(num_classes, 1), pixels)).astype(np.float32)
        initializers.append(numpy_helper.from_array(embedding, "E"))
        nodes += [
            helper.make_node("Gather", ["E", "labels"], ["e"], axis=0),
            helper.make_node("Add", ["h", "e"], ["he"]),
        ]
        pre_activation = "he"
    nodes.append(helper.make_node("Tanh", [pre_activation], ["t"]))
    activation = "t"

    if conv_layers:
        # NCHW convolutions on the activation, then back to NHWC; weights keep values in tanh range.
        initializers.append(
            numpy_helper.from_array(np.array([-1, channels, height, width], np.int64), "nchw_shape")
        )
        nodes.append(helper.make_node("Reshape", ["t", "nchw_shape"], ["x0"]))
        current, current_channels = "x0", channels
        for layer in range(conv_layers):
            out_channels = channels if layer == conv_layers - 1 else conv_channels
            weight = rng.standard_normal((out_channels, current_channels, 3, 3)) / np.sqrt(
                9 * current_channels
            )
            initializers.append(numpy_helper.from_array(weight.astype(np.float32), f"conv{layer}"))
            nodes += [
                helper.make_node("Conv", [current, f"conv{layer}"], [f"c{layer}"], pads=[1, 1, 1, 1]),
                helper.make_node("Tanh", [f"c{layer}"], [f"x{layer + 1}"]),
            ]
            current, current_channels = f"x{layer + 1}", out_channels
        nodes.append(helper.make_node("Transpose", [current], ["nhwc"], perm=[0, 2, 3, 1]))
        initializers.append(numpy_helper.from_array(np.array([-1, pixels], np.int64), "flat_shape"))
        nodes.append(helper.make_node("Reshape", ["nhwc", "flat_shape"], ["t_conv"]))
        activation = "t_conv"

    nodes += [
        helper.make_node("Add", [activation, "one"], ["shifted"]),
        helper.make_node("Mul", ["shifted", "half_range"], ["scaled"]),
        helper.make_node("Clip", ["scaled", "lo", "hi"], ["clipped"]),
        helper.make_node("Round", ["clipped"], ["rounded"]),
        helper.make_node("Cast", ["rounded"], ["cast"], to=output_dtype),
    ]
    if output_rank == 4:
        initializers.append(
            numpy_helper.from_array(np.array([-1, height, width, channels], np.int64), "out_shape")
        )
        nodes.append(helper.make_node("Reshape", ["cast", "out_shape"], ["images"]))
        output_shape = ["N", height, width, channels]
    else:
        nodes.append(helper.make_node("Identity", ["cast"], ["images"]))
        output_shape = ["N", pixels]
    outputs = [helper.make_tensor_value_info("images", output_dtype, output_shape)]

    graph = helper.make_graph(nodes, "ganaug_test_generator", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    meta = default_meta(z_dim, num_classes, class_names, shape)
    for key, value in (meta_overrides or {}).items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def reference_images(path, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """The model's output computed with numpy from its own weights: an independent check of inference."""
    model = onnx.load(str(path))
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    if any(name.startswith("conv") for name in weights):
        raise ValueError("reference_images supports models without conv layers only")
    h = z.astype(np.float32) @ weights["W"]
    if labels is not None:
        h = h + weights["E"][labels]
    shape = json.loads({p.key: p.value for p in model.metadata_props}["ganaug.image_shape"])
    pixels = np.round(np.clip((np.tanh(h) + 1.0) * 127.5, 0, 255)).astype(np.uint8)
    return pixels.reshape(len(z), *shape)


def make_classifier(
    path,
    num_classes: int = 3,
    shape: tuple[int, int, int] = (8, 8, 1),
    output: str = "logits",
    seed: int = 1,
    scale: float = 0.5,
    batch: int | str = "N",
    input_shape: list | None = None,
    metadata: dict | None = None,
    generator=None,
) -> str:
    """Write a classifier ONNX model of the filter contract to `path` and return the path.

    uint8 images [N, H, W, C] -> [-1, 1] -> one linear layer -> `logits` float32 [N, num_classes]
    (output="probabilities": a Softmax after it). batch and input_shape break the
    contract on purpose (a static batch, an undeclared or other image shape).
    generator: a make_model generator whose label embedding becomes the weights, so the classifier
    mostly agrees with the conditioning labels (a realistic filter: most images kept, some not).
    """
    height, width, channels = shape
    pixels = height * width * channels
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((pixels, num_classes))
    if generator is not None:
        embedding = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(generator)).graph.initializer}["E"]
        weights = embedding[:num_classes].T
    weights = (weights * scale / np.sqrt(pixels)).astype(np.float32)
    initializers = [
        numpy_helper.from_array(weights, "W"),
        numpy_helper.from_array(rng.standard_normal(num_classes).astype(np.float32) * 0.1, "b"),
        numpy_helper.from_array(np.array([-1, pixels], np.int64), "flat"),
        numpy_helper.from_array(np.array(127.5, np.float32), "half"),
    ]
    nodes = [
        helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["f", "flat"], ["flat_f"]),
        helper.make_node("Div", ["flat_f", "half"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "one"], ["x"]),
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["logits" if output == "logits" else "l"]),
    ]
    initializers.append(numpy_helper.from_array(np.array(1.0, np.float32), "one"))
    if output != "logits":
        nodes.append(helper.make_node("Softmax", ["l"], [output], axis=1))
    inputs = [helper.make_tensor_value_info("images", TensorProto.UINT8,
                                           input_shape or [batch, height, width, channels])]
    outputs = [helper.make_tensor_value_info(output, TensorProto.FLOAT, [batch, num_classes])]
    graph = helper.make_graph(nodes, "ganaug_test_classifier", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def reference_probabilities(path, images: np.ndarray) -> np.ndarray:
    """make_classifier's probabilities computed with numpy from its own weights, float64 [N, classes]."""
    model = onnx.load(str(path))
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    x = images.reshape(len(images), -1).astype(np.float64) / 127.5 - 1.0
    logits = x @ weights["W"].astype(np.float64) + weights["b"].astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)
