"""Generators and discriminators, built from a `ModelSpec` (plain values, stored in every checkpoint).

The networks know nothing of ranks, precision or files: the exporter rebuilds a generator from the
spec in a checkpoint alone. This module is torch-free (the config validates sizes with it); the
networks are imported when they are built.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ganaug.errors import UserError

# The architectures; config.py's model.arch takes its choices from here.
ARCHS = ("dcgan", "dcgan_tconv", "resnet", "article28")
# The sizes a network may have, here and as the bounds of their config keys (model.z_dim, ...,
# data.resolution), one owner for both.
SIZE_BOUNDS = {"z_dim": (1, 4096), "g_channels": (4, 4096), "d_channels": (4, 4096), "embed_dim": (1, 4096),
               "resolution": (8, 1024)}
MAX_CLASSES = 1 << 16  # the ONNX contract's bound (ganaug.contract.MAX_CLASSES)


def base_resolution(resolution: int) -> tuple[int, int]:
    """Split a side length into (base, number of 2x upsamplings): 32 -> (4, 3), 28 -> (7, 2)."""
    base, doublings = resolution, 0
    while base > 7 and base % 2 == 0:
        base, doublings = base // 2, doublings + 1
    if not 4 <= base <= 7 or doublings < 1:
        raise ValueError(f"{resolution} is not 4..7 times a power of two (e.g. 16, 28, 32, 64)")
    return base, doublings


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    z_dim: int
    num_classes: int  # 0 = unconditional
    channels: int
    resolution: int
    g_channels: int = 32
    d_channels: int = 32
    embed_dim: int = 32
    spectral_norm: bool = True

    @classmethod
    def from_config(cls, model, data) -> ModelSpec:
        """The networks' shape from the model config (config.ModelConfig) and what the data turned out
        to be (its labels, channels and resolution)."""
        if model.conditional is True and data.labels is None:
            raise UserError("model.conditional=true but the training data has no labels")
        conditional = data.labels is not None and model.conditional is not False
        return cls(model.arch, model.z_dim, data.num_classes if conditional else 0, data.channels, data.resolution,
                   model.g_channels, model.d_channels, model.embed_dim, model.spectral_norm)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelSpec:
        """Back from to_dict(); a TypeError or ValueError names what does not fit."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise TypeError(f"unknown model field {unknown[0]!r}")
        spec = cls(**values)
        _check_arch(spec)
        _check_sizes(spec)
        return spec


def _check_sizes(spec: ModelSpec) -> None:
    """A model description read back from a file is input: held to the bounds its config keys have
    (SIZE_BOUNDS), so a tampered checkpoint cannot make export allocate a 10^10-wide layer."""
    for name in (*SIZE_BOUNDS, "num_classes", "channels"):
        value = getattr(spec, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"model field {name} is {value!r}, not a whole number")
    for name, (low, high) in SIZE_BOUNDS.items():
        if not low <= getattr(spec, name) <= high:
            raise ValueError(f"model field {name} is {getattr(spec, name)}, outside {low}..{high}")
    if spec.channels not in (1, 3) or not 0 <= spec.num_classes <= MAX_CLASSES:
        raise ValueError(f"model fields channels {spec.channels} and num_classes {spec.num_classes} must be 1 or 3 "
                         f"and 0..{MAX_CLASSES}")
    if not isinstance(spec.spectral_norm, bool):
        raise ValueError(f"model field spectral_norm is {spec.spectral_norm!r}, not true or false")


def _check_arch(spec: ModelSpec) -> None:
    if spec.arch not in ARCHS:
        raise ValueError(f"unknown architecture {spec.arch!r} (this ganaug builds {', '.join(ARCHS)})")


def build_generator(spec: ModelSpec):
    _check_arch(spec)
    if spec.arch == "article28":
        from ganaug.models.article import ArticleGenerator

        return ArticleGenerator(spec.z_dim, spec.num_classes, spec.channels, spec.embed_dim)
    if spec.arch == "resnet":
        from ganaug.models.resnet import ResNetGenerator

        return ResNetGenerator(spec.z_dim, spec.num_classes, spec.channels, spec.resolution, spec.g_channels,
                               spec.embed_dim)
    from ganaug.models.dcgan import Generator

    return Generator(spec.z_dim, spec.num_classes, spec.channels, spec.resolution, spec.g_channels,
                     spec.embed_dim, upsample="transposed" if spec.arch == "dcgan_tconv" else "resize")


def build_discriminator(spec: ModelSpec):
    _check_arch(spec)
    if spec.arch == "article28":
        from ganaug.models.article import ArticleDiscriminator

        return ArticleDiscriminator(spec.num_classes, spec.channels)
    if spec.arch == "resnet":
        from ganaug.models.resnet import ResNetDiscriminator

        return ResNetDiscriminator(spec.num_classes, spec.channels, spec.resolution, spec.d_channels,
                                   spec.spectral_norm)
    from ganaug.models.dcgan import Discriminator

    return Discriminator(spec.num_classes, spec.channels, spec.resolution, spec.d_channels, spec.spectral_norm)
