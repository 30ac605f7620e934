"""torch -> ONNX with the torch.export-based exporter (`torch.onnx.export(..., dynamo=True)`).

Why this exporter: it is the one torch recommends and uses by default since 2.9 (the TorchScript
exporter is deprecated and gets no new operators); it captures the graph with torch.export, so
what is exported is checked to be what runs, and its optimiser already folds BatchNorm into the
convolutions. Our generators export with it as they are, so there is no reason to fall back.

Why opset 18 by default: it is the opset torch's ONNX translations (torchlib) are written in, so
the graph needs no version conversion (below 18 torch runs the ONNX version converter, and on
failure silently keeps 18; we check); every operator these generators use is unchanged since;
and the lower the opset, the more runtimes read the file (onnxruntime >= 1.14, older TensorRT
parsers, onnx.reference). torch's own default (20) brings nothing these graphs need.
"""

from __future__ import annotations

import logging
import warnings

import onnx
import torch

from ganaug.errors import UserError
from ganaug.export.wrapper import FLOAT_IMAGES, IMAGES, ImageGenerator
from ganaug.models import ModelSpec

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
SUPPORTED_OPSETS = range(17, 22)  # each exported and verified in onnxruntime, fp16 and int8 included
EXAMPLE_BATCH = 2  # torch.export specialises sizes 0 and 1, so the example batch must be larger


def check_opset(opset: int | None) -> int:
    if opset is None:
        return DEFAULT_OPSET
    if opset not in SUPPORTED_OPSETS:
        raise UserError(f"--opset {opset} is not supported; choose {SUPPORTED_OPSETS.start}.."
                        f"{SUPPORTED_OPSETS.stop - 1} (default {DEFAULT_OPSET})")
    return opset


def input_names(spec: ModelSpec) -> list[str]:
    return ["z", "labels"] if spec.num_classes else ["z"]


def _example_inputs(spec: ModelSpec) -> tuple[torch.Tensor, ...]:
    z = torch.zeros(EXAMPLE_BATCH, spec.z_dim)
    if spec.num_classes:
        return z, torch.zeros(EXAMPLE_BATCH, dtype=torch.long)
    return (z,)


def export_onnx(module: ImageGenerator, spec: ModelSpec, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Export to an in-memory ModelProto with outputs (images, float_images) and a dynamic batch N."""
    names = input_names(spec)
    dynamic_shapes = {name: {0: "N"} for name in names}
    with warnings.catch_warnings():
        # z and labels share the batch size, so torch names one axis twice and says so; harmless.
        warnings.filterwarnings("ignore", message=r".*axis name: N will not be used", category=UserWarning)
        program = torch.onnx.export(
            module.eval(), _example_inputs(spec), dynamo=True, opset_version=opset,
            input_names=names, output_names=[IMAGES, FLOAT_IMAGES], dynamic_shapes=dynamic_shapes,
            external_data=False,  # one self-contained file (ours are far below protobuf's 2 GB limit)
            optimize=True, verbose=False,
        )
    model = program.model_proto
    exported_opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    if exported_opset != opset:
        raise UserError(f"torch could not convert the graph to opset {opset} (it stayed at {exported_opset}); "
                        f"use --opset {exported_opset} or newer")
    return model


def drop_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """A copy of `model` without output `name` and without the nodes and weights only it needed."""
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    graph = pruned.graph
    kept_outputs = [output for output in graph.output if output.name != name]
    assert len(kept_outputs) == len(graph.output) - 1, f"the model has no output {name!r}"
    del graph.output[:]
    graph.output.extend(kept_outputs)
    needed = {output.name for output in kept_outputs}
    kept_nodes = []
    for node in reversed(graph.node):  # nodes are topologically sorted, so walk back from the outputs
        if needed.intersection(node.output):
            kept_nodes.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept_nodes))
    kept_weights = [weight for weight in graph.initializer if weight.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(kept_weights)
    kept_infos = [info for info in graph.value_info if info.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(kept_infos)
    return pruned
