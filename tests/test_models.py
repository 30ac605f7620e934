"""Generator/discriminator shapes at each resolution, conditional and not, and the presets' layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ganaug.models import ModelSpec, build_discriminator, build_generator
from ganaug.models.layers import Dropout


@pytest.mark.parametrize("arch, resolution", [("dcgan", 16), ("dcgan", 28), ("dcgan", 32), ("dcgan", 64),
                                              ("dcgan_tconv", 32), ("article28", 28)])
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
        spec = ModelSpec(arch, 16, 0, 1, 28 if arch == "article28" else 32)
        return {type(m) for m in build_generator(spec).modules()}

    assert nn.ConvTranspose2d not in layer_types("dcgan") and nn.Upsample in layer_types("dcgan")
    assert nn.ConvTranspose2d in layer_types("dcgan_tconv")
    assert nn.ConvTranspose2d in layer_types("article28")


def test_seed_preset_is_the_seed_design():
    spec = ModelSpec("article28", 100, 0, 1, 28)
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


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_fast_dropout_keeps_each_element_with_the_right_probability_and_scales_it(layout):
    x = torch.ones(64, 8, 32, 32)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.ones(64, 8, 32, 64)[..., ::2]  # neither contiguous nor channels_last
    x.requires_grad_(True)
    layer = Dropout(0.3).train()
    y = layer(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005  # 524288 elements: 0.005 is about 8 sigma
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))
    # No position is favoured: every one of the four 16-bit slots of a 64-bit draw keeps about 70%.
    slots = kept.flatten()[: kept.numel() // 4 * 4].view(-1, 4).float().mean(0)
    assert ((slots - 0.7).abs() < 0.01).all(), slots
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)


def test_fast_dropout_is_seeded_by_torch_and_off_in_eval():
    x = torch.randn(4, 3, 8, 8)
    layer = Dropout(0.5)
    torch.manual_seed(1)
    first = layer(x)
    torch.manual_seed(1)
    assert torch.equal(layer(x), first)
    assert not torch.equal(layer(x), first)
    assert torch.equal(layer.eval()(x), x)
