"""Generators and discriminators, built from a `ModelSpec` (plain values, stored in every checkpoint).

The networks know nothing of ranks, precision or files: the exporter rebuilds a generator from the
spec in a checkpoint alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

ARCHS = ("dcgan", "dcgan_tconv", "seed")


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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelSpec:
        return cls(**values)


def build_generator(spec: ModelSpec) -> nn.Module:
    if spec.arch == "seed":
        from ganaug.models.seed import SeedGenerator

        return SeedGenerator(spec.z_dim, spec.num_classes, spec.channels, spec.embed_dim)
    from ganaug.models.dcgan import Generator

    return Generator(spec.z_dim, spec.num_classes, spec.channels, spec.resolution, spec.g_channels,
                     spec.embed_dim, upsample="transposed" if spec.arch == "dcgan_tconv" else "resize")


def build_discriminator(spec: ModelSpec) -> nn.Module:
    if spec.arch == "seed":
        from ganaug.models.seed import SeedDiscriminator

        return SeedDiscriminator(spec.num_classes, spec.channels)
    from ganaug.models.dcgan import Discriminator

    return Discriminator(spec.num_classes, spec.channels, spec.resolution, spec.d_channels, spec.spectral_norm)
