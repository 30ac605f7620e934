"""The contract, in one torch-free module: the ganaug.* metadata keys of an ONNX model, written for
generators (`ganaug export`) and classifiers (`export_classifier_onnx`: the sampler's filter, augment's
teacher), and read and checked with the graph's inputs and outputs; and the sample set's layout (its
paths, class directory names and manifest.csv), which `ganaug sample` writes and others read.

See "The ONNX model" in the design. Every violation is a UserError naming the file and what is
wrong, because the usual cause is a file that was not written by ganaug. No other module spells a
ganaug.* key: they build and read metadata here.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import unicodedata
from dataclasses import dataclass

import numpy as np

from ganaug import safejson
from ganaug.errors import UserError
from ganaug.files import write_atomic

SCHEMA = "1"
SCHEMA_KEY = "ganaug.schema"
KIND_KEY = "ganaug.kind"  # "generator" or "classifier"
Z_DIM_KEY = "ganaug.z_dim"
NUM_CLASSES_KEY = "ganaug.num_classes"
CLASS_NAMES_KEY = "ganaug.class_names"
IMAGE_SHAPE_KEY = "ganaug.image_shape"
PRECISION_KEY = "ganaug.precision"
TRAIN_STEP_KEY = "ganaug.train_step"
CHECKPOINT_SHA256_KEY = "ganaug.checkpoint_sha256"
PROVENANCE_PREFIX = "ganaug."  # export adds provenance keys under it (arch, version, parity, ...)
REQUIRED_KEYS = (SCHEMA_KEY, Z_DIM_KEY, NUM_CLASSES_KEY, CLASS_NAMES_KEY, IMAGE_SHAPE_KEY, PRECISION_KEY,
                 TRAIN_STEP_KEY, CHECKPOINT_SHA256_KEY)
GENERATOR, CLASSIFIER = "generator", "classifier"
CLASSIFIER_OUTPUTS = ("logits", "probabilities")  # the sampler applies a softmax to logits


def generator_metadata(z_dim: int, num_classes: int, class_names: list[str], image_shape: tuple[int, int, int],
                       precision: str, train_step: int, checkpoint_sha256: str) -> dict[str, str]:
    """The contract's keys of a generator, as the strings ONNX metadata holds."""
    return {SCHEMA_KEY: SCHEMA, KIND_KEY: GENERATOR, Z_DIM_KEY: str(z_dim), NUM_CLASSES_KEY: str(num_classes),
            CLASS_NAMES_KEY: json.dumps(list(class_names)), IMAGE_SHAPE_KEY: json.dumps(list(image_shape)),
            PRECISION_KEY: precision, TRAIN_STEP_KEY: str(train_step), CHECKPOINT_SHA256_KEY: checkpoint_sha256}


def classifier_metadata(num_classes: int, image_shape: tuple[int, int, int],
                        class_names: list[str] | None = None) -> dict[str, str]:
    """A classifier's keys: the sampler checks its class names and image shape against the generator's."""
    metadata = {SCHEMA_KEY: SCHEMA, KIND_KEY: CLASSIFIER, NUM_CLASSES_KEY: str(num_classes),
                IMAGE_SHAPE_KEY: json.dumps(list(image_shape))}
    if class_names is not None:
        metadata[CLASS_NAMES_KEY] = json.dumps(list(class_names), ensure_ascii=False)
    return metadata


UNCONDITIONAL_CLASS = "unconditional"
SUPPORTED_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: what PNG stores without conversion

# Bounds that refuse an absurd model before it can exhaust memory. None binds a real generator.
MAX_Z_DIM = 1 << 16  # a latent block is 1024 x z_dim float32: 256 MiB at the bound
MAX_CLASSES = 1 << 16  # ImageNet-21k has 21,841
MAX_SIDE = 1 << 15  # pixels per image side
MAX_IMAGE_BYTES = 1 << 28  # H x W x C of one image: 256 MiB
# Metadata values are read before anything else, so their size is bounded before any parsing:
# class names get 256 bytes each at MAX_CLASSES, every other value a few numbers' worth.
MAX_VALUE_CHARS = {CLASS_NAMES_KEY: MAX_CLASSES * 256}
MAX_OTHER_VALUE_CHARS = 1024
_DIGITS = re.compile(r"[0-9]+")  # int() would also take "1_000", " 8 " and other scripts' digits


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


def _int(metadata: dict, key: str, source: str, minimum: int, maximum: int) -> int:
    text = metadata[key]  # at most MAX_OTHER_VALUE_CHARS long: int() takes it whole
    if not _DIGITS.fullmatch(text):
        raise UserError(f"{source}: metadata {key}={text!r} is not a whole number")
    value = int(text)
    if value < minimum:
        raise UserError(f"{source}: metadata {key}={value} must be at least {minimum}")
    if value > maximum:
        shown = text if len(text) <= 20 else f"{text[:12]}...({len(text)} digits)"
        raise UserError(f"{source}: metadata {key}={shown} is out of range (at most {maximum})")
    return value


def _flat_json_list(metadata: dict, key: str, source: str, what: str) -> list:
    """A metadata value that must be a flat JSON list (its length is bounded already)."""
    text = metadata[key]
    try:
        return safejson.loads(text, max_depth=1)
    except safejson.TooDeep:
        raise UserError(f"{source}: metadata {key} must be a JSON list of {what}, not nested") from None
    except ValueError:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise UserError(f"{source}: metadata {key}={shown!r} is not valid JSON") from None


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
    for key in REQUIRED_KEYS:
        limit = MAX_VALUE_CHARS.get(key, MAX_OTHER_VALUE_CHARS)
        if len(metadata[key]) > limit:
            raise UserError(f"{source}: metadata {key} is {len(metadata[key])} characters long (at most {limit})")
    if metadata[SCHEMA_KEY] != SCHEMA:
        raise UserError(
            f"{source}: unsupported {SCHEMA_KEY} {metadata[SCHEMA_KEY]!r}; this sampler reads "
            f"schema {SCHEMA!r} (a newer ganaug may read this model)"
        )


def _static(dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _check_dynamic_batch(spec: TensorSpec, source: str) -> None:
    if _static(spec.shape[0]) is not None:
        raise UserError(
            f"{source}: {spec.name!r} has a fixed batch size of {spec.shape[0]}; the contract is a dynamic "
            "N (export with a dynamic batch axis)"
        )


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
    _check_dynamic_batch(z, source)
    labels = by_name.get("labels")
    if labels is not None and (labels.type != "tensor(int64)" or len(labels.shape) != 1):
        raise UserError(
            f"{source}: input 'labels' is {labels.type} of rank {len(labels.shape)}; "
            "the contract is int64 [N]"
        )
    if labels is not None:
        _check_dynamic_batch(labels, source)
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
    _check_dynamic_batch(images, source)
    for axis, (dim, expected) in enumerate(zip(images.shape[1:], image_shape, strict=True), start=1):
        if _static(dim) not in (None, expected):
            raise UserError(
                f"{source}: output 'images' has size {dim} on axis {axis} but ganaug.image_shape "
                f"says {list(image_shape)} (H, W, C)"
            )


def _image_shape(metadata: dict, source: str) -> tuple[int, int, int]:
    text = metadata[IMAGE_SHAPE_KEY]
    shape = _flat_json_list(metadata, IMAGE_SHAPE_KEY, source, "3 integers")
    # bool is an int in Python: [8, 8, true] is not a shape.
    if not (isinstance(shape, list) and len(shape) == 3
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise UserError(f"{source}: metadata ganaug.image_shape={text!r} must be [H, W, C] with positive integers")
    height, width, channels = shape
    if channels not in SUPPORTED_CHANNELS:
        raise UserError(f"{source}: images with {channels} channels are not supported (1, 3 or 4)")
    return height, width, channels


def _check_image_size(image_shape: tuple[int, int, int], source: str) -> None:
    """After the graph checks (which name the real size where the graph states it)."""
    height, width, channels = image_shape
    if max(height, width) > MAX_SIDE or height * width * channels > MAX_IMAGE_BYTES:
        raise UserError(
            f"{source}: metadata ganaug.image_shape={list(image_shape)} is too large (at most {MAX_SIDE} "
            f"pixels a side and {MAX_IMAGE_BYTES >> 20} MiB an image)"
        )


def _class_names(
    metadata: dict, num_classes: int, conditional: bool, source: str
) -> tuple[int, tuple[str, ...]]:
    names = _flat_json_list(metadata, CLASS_NAMES_KEY, source, "strings")
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise UserError(f"{source}: metadata ganaug.class_names must be a JSON list of strings")
    for index, name in enumerate(names):
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # JSON can spell a lone surrogate ("\ud800"); no file system can
            raise UserError(f"{source}: ganaug.class_names[{index}] is not valid Unicode (a lone surrogate)") from None
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
    z_dim = _int(metadata, Z_DIM_KEY, source, minimum=1, maximum=MAX_Z_DIM)
    num_classes = _int(metadata, NUM_CLASSES_KEY, source, minimum=0, maximum=MAX_CLASSES)
    image_shape = _image_shape(metadata, source)
    conditional = _check_inputs(inputs, z_dim, source)
    _check_output(outputs, image_shape, source)
    _check_image_size(image_shape, source)
    num_classes, class_names = _class_names(metadata, num_classes, conditional, source)
    return ModelMeta(
        z_dim=z_dim,
        num_classes=num_classes,
        class_names=class_names,
        image_shape=image_shape,
        precision=metadata[PRECISION_KEY],
        train_step=_int(metadata, TRAIN_STEP_KEY, source, minimum=0, maximum=2**63 - 1),
        checkpoint_sha256=metadata[CHECKPOINT_SHA256_KEY],
        sha256=sha256,
        conditional=conditional,
    )


def check_classifier_metadata(metadata: dict, meta: ModelMeta, source: str) -> None:
    """A classifier's optional metadata: where it states its classes or image shape, they must be the
    generator's (`meta`)."""
    checks = ((CLASS_NAMES_KEY, list(meta.class_names), "class names"),
              (IMAGE_SHAPE_KEY, list(meta.image_shape), "image shape"))
    for key, expected, what in checks:
        text = metadata.get(key)
        if text is None:
            continue
        if len(text) > MAX_VALUE_CHARS.get(key, MAX_OTHER_VALUE_CHARS):
            raise UserError(f"{source}: classifier metadata {key} is {len(text)} characters long")
        try:
            value = safejson.loads(text, max_depth=1)
        except ValueError:
            raise UserError(f"{source}: classifier metadata {key} is not a flat JSON list") from None
        if value != expected:
            shown = shorten(repr(value), 120)
            raise UserError(f"{source}: the classifier's {what} {shown} are not the generator's {shorten(repr(expected), 120)}"
                            + (" (same classes in another order?)" if key == CLASS_NAMES_KEY
                               and isinstance(value, list) and sorted(map(str, value)) == sorted(expected) else ""))


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_classifier_graph(session, image_shape: tuple[int, int, int], num_classes: int, source: str) -> str:
    """The classifier's declared input and output against the contract; returns the output's kind."""
    inputs = [TensorSpec.from_node_arg(arg) for arg in session.get_inputs()]
    outputs = [TensorSpec.from_node_arg(arg) for arg in session.get_outputs()]
    contract = f"uint8 [N, {', '.join(map(str, image_shape))}] (N, H, W, C: the generator's images)"
    if len(inputs) != 1:
        raise UserError(f"{source}: the classifier must have one input, {contract}; it has {len(inputs)}: "
                        + ", ".join(repr(spec.name) for spec in inputs))
    if inputs[0].type != "tensor(uint8)" or len(inputs[0].shape) != 4:
        raise UserError(f"{source}: classifier input {inputs[0].name!r} is {inputs[0].type} of rank "
                        f"{len(inputs[0].shape)}; the contract is {contract}, scaled inside the graph")
    contract = f"float32 [N, {num_classes}] named 'logits' or 'probabilities'"
    if len(outputs) != 1:
        raise UserError(f"{source}: the classifier must have one output, {contract}; it has {len(outputs)}: "
                        + ", ".join(repr(spec.name) for spec in outputs))
    if outputs[0].name not in CLASSIFIER_OUTPUTS:
        raise UserError(f"{source}: the classifier's output is named {outputs[0].name!r}; name it 'logits' (the "
                        "sampler applies the softmax) or 'probabilities' (taken as they are)")
    if outputs[0].type != "tensor(float)" or len(outputs[0].shape) != 2:
        raise UserError(f"{source}: classifier output {outputs[0].name!r} is {outputs[0].type} of rank "
                        f"{len(outputs[0].shape)}; the contract is {contract}")
    for role, spec in (("input", inputs[0]), ("output", outputs[0])):
        if isinstance(spec.shape[0], int) and spec.shape[0] > 0:
            raise UserError(f"{source}: classifier {role} {spec.name!r} has a fixed batch size of {spec.shape[0]}; "
                            "the contract is a dynamic N (export with a dynamic batch axis)")
    declared = [(f"classifier input {inputs[0].name!r} has size {dim} on axis {axis} but the generator's images are "
                 f"{list(image_shape)} (H, W, C)", dim, expected)
                for axis, (dim, expected) in enumerate(zip(inputs[0].shape[1:], image_shape, strict=True), start=1)]
    declared.append((f"the classifier has {outputs[0].shape[1]} classes but the generator has {num_classes}",
                     outputs[0].shape[1], num_classes))
    for message, dim, expected in declared:
        if isinstance(dim, int) and dim > 0 and dim != expected:  # a dynamic size is checked by the probe
            raise UserError(f"{source}: {message}")
    return outputs[0].name


# ------------------------------------------------------------------------------------------- the sample set
# docs/sampler.md, "Output layout": what `ganaug sample` writes and `ganaug augment` and SyntheticFolder read.
INFO_NAME, MANIFEST_NAME = "sample_info.json", "manifest.csv"
MANIFEST_COLUMNS = ("path", "label", "class_name", "index", "seed")  # and "score" in a filtered set
SCORE_BYTES = 16  # a manifest's ",score": the shortest float32 text is at most 13 characters
_UNSAFE_CHARS = re.compile(r'[\\/<>:"|?*\x00-\x1f\x7f]')  # separators, Windows-reserved, control characters
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
_MAX_NAME_BYTES = 200  # "<dir>_<8 digits>.png" stays under the usual 255-byte limit


def _truncate_utf8(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def class_dir_names(class_names: list[str] | tuple[str, ...]) -> list[str]:
    """Safe, distinct directory names, one per class, that sort in class order (ImageFolder numbers them in
    sorted() order). Duplicates, compared case-insensitively as macOS and Windows do, get _1, _2, ... in
    class order; where the names do not sort in class order, each gets its zero-padded label as a prefix."""
    taken, result = {INFO_NAME, MANIFEST_NAME}, []
    for index, name in enumerate(class_names):
        text = _UNSAFE_CHARS.sub("_", unicodedata.normalize("NFC", name))
        # Leading dots hide a directory; Windows drops trailing dots and spaces ("a." would merge with "a").
        text = _truncate_utf8(text.strip().strip(".").strip(), _MAX_NAME_BYTES).rstrip(". ") or f"class_{index}"
        stem, dot, extension = text.partition(".")
        base = candidate = f"{stem}_{dot}{extension}" if stem.upper() in _WINDOWS_RESERVED else text  # "CON.txt" too
        suffix = 0
        while candidate.casefold() in taken:
            suffix += 1
            candidate = f"{base}_{suffix}"
        taken.add(candidate.casefold())
        result.append(candidate)
    if sorted(result) != result:  # equal-width digits then "_": the prefixes alone decide the order
        width = len(str(len(result) - 1))
        result = [(prefix := f"{label:0{width}d}_") + _truncate_utf8(name, _MAX_NAME_BYTES - len(prefix)).rstrip(". ")
                  for label, name in enumerate(result)]
    assert all(name and name not in (".", "..") and os.path.basename(name) == name for name in result), result
    return result


class Layout:
    """Where image i of a set lives."""

    def __init__(self, out_dir: str, fmt: str, class_dirs: list[str], shard_size: int):
        self.out_dir, self.format, self.class_dirs, self.shard_size = out_dir, fmt, class_dirs, shard_size
        self.manifest_path = os.path.join(out_dir, MANIFEST_NAME)

    def relative_path(self, index: int, label: int) -> str:
        if self.format == "png":
            return f"{self.class_dirs[label]}/{self.class_dirs[label]}_{index:08d}.png"
        return f"shard_{index // self.shard_size:05d}.npz"

    def path(self, index: int, label: int) -> str:
        return os.path.join(self.out_dir, *self.relative_path(index, label).split("/"))

    def file_path(self, k: int) -> str:
        return os.path.join(self.out_dir, f"shard_{k:05d}.npz")

    def png_indices(self, label: int) -> list[int]:
        """The indices of the PNGs in class `label`'s directory, by their names."""
        directory, pattern = self.class_dirs[label], png_pattern(self.class_dirs[label])
        with contextlib.suppress(OSError):
            return [int(name[len(directory) + 1:-4]) for name in os.listdir(os.path.join(self.out_dir, directory))
                    if pattern.fullmatch(name)]
        return []


def png_pattern(class_dir: str) -> re.Pattern:
    return re.compile(re.escape(class_dir) + r"_\d{8,}\.png")


def format_score(score: np.float32) -> str:
    """The shortest text that reads back as the same float32 (manifest.csv's `score`)."""
    return str(np.float32(score))


def write_manifest(path: str, rows, scored: bool) -> None:
    """manifest.csv, atomically: rows (MANIFEST_COLUMNS, then the score of a filtered set) from any iterable."""

    def fill(f) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS + ("score",) * scored)
        writer.writerows(rows)
        text.flush()
        text.detach()  # write_atomic closes the file

    write_atomic(path, fill, fsync=True)


def manifest_bytes_bound(n: int, classes: list[tuple[int, int, int, str]], seed: int, score_column: bool = False) -> int:
    """manifest.csv of n rows; classes: (rows, label, longest path in bytes, class name) per class."""
    digits, score = len(str(max(n - 1, 0))), SCORE_BYTES if score_column else 0
    return 64 + sum(  # a quoted name doubles its quotes at worst
        rows * (path_bytes + 2 * len(name.encode()) + 2 + len(str(label)) + digits + len(str(seed)) + 5 + score)
        for rows, label, path_bytes, name in classes)


def read_manifest(out_dir: str) -> list[dict[str, str]]:
    """A set's manifest.csv, one dict per row keyed by its columns."""
    with open(os.path.join(out_dir, MANIFEST_NAME), encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))
