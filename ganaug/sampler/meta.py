"""The model contract: read and check a ganaug ONNX model's metadata, inputs and outputs.

See "The ONNX model" in the design. Every violation is a UserError naming the file and what is
wrong, because the usual cause is a file that was not written by `ganaug export`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ganaug.errors import UserError

SCHEMA = "1"
REQUIRED_KEYS = (
    "ganaug.schema",
    "ganaug.z_dim",
    "ganaug.num_classes",
    "ganaug.class_names",
    "ganaug.image_shape",
    "ganaug.precision",
    "ganaug.train_step",
    "ganaug.checkpoint_sha256",
)
UNCONDITIONAL_CLASS = "unconditional"
SUPPORTED_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: what PNG stores without conversion


@dataclass(frozen=True)
class ModelMeta:
    """What the sampler knows about a model. Unconditional models are presented as one class."""

    z_dim: int
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (H, W, C)
    precision: str
    train_step: int
    checkpoint_sha256: str
    sha256: str  # of the .onnx file itself
    conditional: bool

    def to_dict(self) -> dict:
        return {
            "z_dim": self.z_dim,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "image_shape": list(self.image_shape),
            "precision": self.precision,
            "train_step": self.train_step,
            "checkpoint_sha256": self.checkpoint_sha256,
            "sha256": self.sha256,
            "conditional": self.conditional,
        }


@dataclass(frozen=True)
class TensorSpec:
    """Name, onnxruntime type string (e.g. 'tensor(float)') and shape (ints, or str/None when dynamic)."""

    name: str
    type: str
    shape: tuple

    @classmethod
    def from_node_arg(cls, arg) -> TensorSpec:
        return cls(arg.name, arg.type, tuple(arg.shape))


def _int(metadata: dict, key: str, source: str, minimum: int) -> int:
    text = metadata[key]
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"{source}: metadata {key}={text!r} is not a whole number") from None
    if value < minimum:
        raise UserError(f"{source}: metadata {key}={value} must be at least {minimum}")
    return value


def _json(metadata: dict, key: str, source: str):
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError:
        raise UserError(f"{source}: metadata {key}={metadata[key]!r} is not valid JSON") from None


def _check_metadata_keys(metadata: dict, source: str) -> None:
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if len(missing) == len(REQUIRED_KEYS):
        raise UserError(
            f"{source} has no ganaug metadata (missing {missing[0]!r} and the other ganaug.* keys); "
            "is it a model written by `ganaug export`?"
        )
    if missing:
        raise UserError(
            f"{source}: ganaug metadata key {missing[0]!r} is missing"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    if metadata["ganaug.schema"] != SCHEMA:
        raise UserError(
            f"{source}: unsupported ganaug.schema {metadata['ganaug.schema']!r}; this sampler reads "
            f"schema {SCHEMA!r} (a newer ganaug may read this model)"
        )


def _static(dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _check_inputs(inputs: list[TensorSpec], z_dim: int, source: str) -> bool:
    """Check the graph inputs; return whether the model is conditional (has a `labels` input)."""
    by_name = {spec.name: spec for spec in inputs}
    unexpected = sorted(set(by_name) - {"z", "labels"})
    if unexpected:
        raise UserError(
            f"{source}: unexpected model input {unexpected[0]!r}; the contract is z [N, z_dim] "
            "and, for conditional models, labels [N]"
        )
    z = by_name.get("z")
    if z is None:
        raise UserError(f"{source}: the model has no input 'z' (inputs: {sorted(by_name)})")
    if z.type != "tensor(float)" or len(z.shape) != 2:
        raise UserError(
            f"{source}: input 'z' is {z.type} of rank {len(z.shape)}; the contract is float32 [N, z_dim]"
        )
    if _static(z.shape[1]) not in (None, z_dim):
        raise UserError(f"{source}: input 'z' has {z.shape[1]} columns but ganaug.z_dim is {z_dim}")
    labels = by_name.get("labels")
    if labels is not None and (labels.type != "tensor(int64)" or len(labels.shape) != 1):
        raise UserError(
            f"{source}: input 'labels' is {labels.type} of rank {len(labels.shape)}; "
            "the contract is int64 [N]"
        )
    return labels is not None


def _check_output(outputs: list[TensorSpec], image_shape: tuple[int, int, int], source: str) -> None:
    by_name = {spec.name: spec for spec in outputs}
    images = by_name.get("images")
    if images is None:
        raise UserError(f"{source}: the model has no output 'images' (outputs: {sorted(by_name)})")
    if images.type != "tensor(uint8)":
        raise UserError(
            f"{source}: output 'images' is {images.type}; the contract is uint8 [N, H, W, C] "
            "(post-processing belongs in the graph)"
        )
    if len(images.shape) != 4:
        raise UserError(
            f"{source}: output 'images' has rank {len(images.shape)}; the contract is uint8 [N, H, W, C]"
        )
    for axis, (dim, expected) in enumerate(zip(images.shape[1:], image_shape, strict=True), start=1):
        if _static(dim) not in (None, expected):
            raise UserError(
                f"{source}: output 'images' has size {dim} on axis {axis} but ganaug.image_shape "
                f"says {list(image_shape)} (H, W, C)"
            )


def _class_names(
    metadata: dict, num_classes: int, conditional: bool, source: str
) -> tuple[int, tuple[str, ...]]:
    names = _json(metadata, "ganaug.class_names", source)
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise UserError(f"{source}: metadata ganaug.class_names must be a JSON list of strings")
    if not conditional:
        # Unconditional: one class, named after the model's single class if it has one.
        return 1, (names[0],) if len(names) == 1 else (UNCONDITIONAL_CLASS,)
    if num_classes < 1:
        raise UserError(f"{source}: the model has a 'labels' input but ganaug.num_classes is {num_classes}")
    if len(names) != num_classes:
        raise UserError(
            f"{source}: ganaug.class_names has {len(names)} names but ganaug.num_classes is {num_classes}"
        )
    return num_classes, tuple(names)


def read_model_meta(
    metadata: dict, inputs: list[TensorSpec], outputs: list[TensorSpec], sha256: str, source: str
) -> ModelMeta:
    """Check a model against the contract and return its ModelMeta."""
    _check_metadata_keys(metadata, source)
    z_dim = _int(metadata, "ganaug.z_dim", source, minimum=1)
    num_classes = _int(metadata, "ganaug.num_classes", source, minimum=0)
    shape = _json(metadata, "ganaug.image_shape", source)
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape)):
        raise UserError(
            f"{source}: metadata ganaug.image_shape={metadata['ganaug.image_shape']!r} "
            "must be [H, W, C] with positive integers"
        )
    if shape[2] not in SUPPORTED_CHANNELS:
        raise UserError(f"{source}: images with {shape[2]} channels are not supported (1, 3 or 4)")
    image_shape = (shape[0], shape[1], shape[2])
    conditional = _check_inputs(inputs, z_dim, source)
    _check_output(outputs, image_shape, source)
    num_classes, class_names = _class_names(metadata, num_classes, conditional, source)
    return ModelMeta(
        z_dim=z_dim,
        num_classes=num_classes,
        class_names=class_names,
        image_shape=image_shape,
        precision=metadata["ganaug.precision"],
        train_step=_int(metadata, "ganaug.train_step", source, minimum=0),
        checkpoint_sha256=metadata["ganaug.checkpoint_sha256"],
        sha256=sha256,
        conditional=conditional,
    )
