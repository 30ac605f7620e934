"""The ganaug.* metadata of an exported model (all strings; see "The ONNX model" in the design)."""

from __future__ import annotations

import json

import onnx
import torch

from ganaug import __version__, contract
from ganaug.export.source import LoadedGenerator
from ganaug.export.verify import ParityReport


def model_metadata(loaded: LoadedGenerator, precision: str, opset: int, reports: list[ParityReport],
                   int8_note: str | None = None) -> dict[str, str]:
    """The contract's keys (ganaug.contract) and, under the same prefix, provenance for people and
    model cards."""
    spec = loaded.spec
    # An unconditional model has no classes; a single dataset class still names its images.
    class_names = loaded.class_names if spec.num_classes else loaded.class_names[:1] if len(loaded.class_names) == 1 else []
    metadata = contract.generator_metadata(spec.z_dim, spec.num_classes, class_names,
                                           (spec.resolution, spec.resolution, spec.channels), precision,
                                           loaded.step, loaded.checkpoint_sha256)
    provenance = {
        "arch": spec.arch,
        "model_spec": json.dumps(spec.to_dict()),
        "weights": loaded.weights,
        "version": __version__,
        "exporter": f"torch.onnx dynamo=True (torch {torch.__version__}), opset {opset}",
        "parity": json.dumps({report.precision: report.to_dict() for report in reports}),
    }
    if int8_note:
        provenance["int8_note"] = int8_note
    return metadata | {contract.PROVENANCE_PREFIX + key: value for key, value in provenance.items()}


def attach_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    onnx.helper.set_model_props(model, metadata)
    # ONNX's own integer version field, for tools that know ONNX but not ganaug's keys (Netron,
    # onnx.load(...).model_version, model registries): the training step of the exported weights,
    # so a later export of a longer run has a larger version. docs/export.md says so.
    model.model_version = int(metadata[contract.TRAIN_STEP_KEY])
    model.doc_string = (f"ganaug {metadata[contract.PROVENANCE_PREFIX + 'arch']} generator, "
                        f"{metadata[contract.PRECISION_KEY]}: "
                        "inputs z float32 [N, z_dim] (and labels int64 [N] when conditional), "
                        "output images uint8 [N, H, W, C]")
