"""Generator/discriminator shapes at each resolution, conditional and not, and the presets' layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ganaug.models import ModelSpec, build_discriminator, build_generator


@pytest.mark.parametrize("arch, resolution", [("dcgan", 16), ("dcgan", 28), ("dcgan", 32), ("dcgan", 64),
                                              ("dcgan_tconv", 32), ("seed", 28)])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_shapes(arch, resolution, num_classes):
    channels = 3 if resolution == 64 else 1
    spec = ModelSpec(arch, 16, num_classes, channels, resolution, g_channels=8, d_channels=8, embed_dim=4)
    generator, discriminator = build_generator(spec), build_discriminator(spec)
    labels = torch.arange(3) % 10 if num_classes else None
    images = generator(torch.randn(3, 16), labels)
    assert images.shape == (3, channels, resolution, resolution)
    assert images.abs().max() <= 1  # tanh output
    assert discriminator(images, labels).shape == (3,)


def test_conditioning_changes_the_output():
    spec = ModelSpec("dcgan", 16, 10, 1, 16, 8, 8, 4)
    generator = build_generator(spec).eval()
    z = torch.randn(1, 16).repeat(2, 1)
    images = generator(z, torch.tensor([0, 1]))
    assert not torch.allclose(images[0], images[1])
    discriminator = build_discriminator(spec)
    logits = discriminator(images[:1].repeat(2, 1, 1, 1), torch.tensor([0, 1]))
    assert logits[0] != logits[1]  # projection: the label changes the score of the same image


def test_upsampling_kinds():
    def layer_types(arch):
        spec = ModelSpec(arch, 16, 0, 1, 28 if arch == "seed" else 32)
        return {type(m) for m in build_generator(spec).modules()}

    assert nn.ConvTranspose2d not in layer_types("dcgan") and nn.Upsample in layer_types("dcgan")
    assert nn.ConvTranspose2d in layer_types("dcgan_tconv")
    assert nn.ConvTranspose2d in layer_types("seed")


def test_seed_preset_is_the_seed_design():
    spec = ModelSpec("seed", 100, 0, 1, 28)
    g, d = build_generator(spec), build_discriminator(spec)
    convs = [(m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in g.modules()
             if isinstance(m, nn.ConvTranspose2d)]
    assert convs == [(256, 128, (5, 5), (1, 1)), (128, 64, (5, 5), (2, 2)), (64, 1, (5, 5), (2, 2))]
    assert isinstance(g.project[0], nn.Linear) and g.project[0].out_features == 7 * 7 * 256
    d_convs = [(m.out_channels, m.kernel_size, m.stride) for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert d_convs == [(64, (5, 5), (2, 2)), (128, (5, 5), (2, 2))]
    assert [m.p for m in d.modules() if isinstance(m, nn.Dropout)] == [0.3, 0.3]
    assert d.head.in_features == 128 * 7 * 7 and d.head.out_features == 1


def test_spectral_norm_is_optional():
    with_sn = build_discriminator(ModelSpec("dcgan", 8, 0, 1, 16, spectral_norm=True))
    without = build_discriminator(ModelSpec("dcgan", 8, 0, 1, 16, spectral_norm=False))
    assert any("parametrizations" in name for name, _ in with_sn.named_parameters())
    assert not any("parametrizations" in name for name, _ in without.named_parameters())
