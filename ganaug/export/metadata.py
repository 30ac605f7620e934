"""The ganaug.* metadata of an exported model (all strings; see "The ONNX model" in the design)."""

from __future__ import annotations

import json

import onnx
import torch

from ganaug import __version__
from ganaug.export.source import LoadedGenerator
from ganaug.export.verify import ParityReport

SCHEMA = "1"


def model_metadata(loaded: LoadedGenerator, precision: str, opset: int, reports: list[ParityReport],
                   int8_note: str | None = None) -> dict[str, str]:
    spec = loaded.spec
    # An unconditional model has no classes; a single dataset class still names its images.
    class_names = loaded.class_names if spec.num_classes else loaded.class_names[:1] if len(loaded.class_names) == 1 else []
    metadata = {
        # the contract
        "ganaug.schema": SCHEMA,
        "ganaug.z_dim": str(spec.z_dim),
        "ganaug.num_classes": str(spec.num_classes),
        "ganaug.class_names": json.dumps(class_names),
        "ganaug.image_shape": json.dumps([spec.resolution, spec.resolution, spec.channels]),
        "ganaug.precision": precision,
        "ganaug.train_step": str(loaded.step),
        "ganaug.checkpoint_sha256": loaded.checkpoint_sha256,
        # provenance and verification, for people and model cards
        "ganaug.arch": spec.arch,
        "ganaug.model_spec": json.dumps(spec.to_dict()),
        "ganaug.weights": loaded.weights,
        "ganaug.version": __version__,
        "ganaug.exporter": f"torch.onnx dynamo=True (torch {torch.__version__}), opset {opset}",
        "ganaug.parity": json.dumps({report.precision: report.to_dict() for report in reports}),
    }
    if int8_note:
        metadata["ganaug.int8_note"] = int8_note
    return metadata


def attach_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    onnx.helper.set_model_props(model, metadata)
    # ONNX's own integer version field, for tools that know ONNX but not ganaug's keys (Netron,
    # onnx.load(...).model_version, model registries): the training step of the exported weights,
    # so a later export of a longer run has a larger version. docs/export.md says so.
    model.model_version = int(metadata["ganaug.train_step"])
    model.doc_string = (f"ganaug {metadata['ganaug.arch']} generator, {metadata['ganaug.precision']}: "
                        "inputs z float32 [N, z_dim] (and labels int64 [N] when conditional), "
                        "output images uint8 [N, H, W, C]")
