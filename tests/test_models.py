"""Generator/discriminator shapes at each resolution, conditional and not, the presets' layers, and how
the label enters each network (conditional BatchNorm in the resnet G, projection in every D)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from ganaug.models import ModelSpec, build_discriminator, build_generator
from ganaug.models.layers import Dropout
from ganaug.models.resnet import ConditionalBatchNorm2d


@pytest.mark.parametrize("arch, resolution", [("dcgan", 16), ("dcgan", 28), ("dcgan", 32), ("dcgan", 64),
                                              ("dcgan_tconv", 32), ("article28", 28), ("resnet", 16),
                                              ("resnet", 28), ("resnet", 32), ("resnet", 64), ("resnet", 128)])
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
    assert nn.ConvTranspose2d not in layer_types("resnet")
    assert isinstance(list(build_generator(ModelSpec("resnet", 16, 10, 1, 32)).modules())[-1], nn.Tanh)


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


# ------------------------------------------------------------------------------ resnet


def _randomise_conditional_norms(generator: nn.Module) -> list[ConditionalBatchNorm2d]:
    """cBN projections start at zero (a plain BN); give them values as training would."""
    norms = [m for m in generator.modules() if isinstance(m, ConditionalBatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.gain.weight.normal_(0, 0.5)
            norm.bias.weight.normal_(0, 0.5)
    return norms


def test_resnet_generator_takes_the_label_only_through_conditional_batchnorm():
    spec = ModelSpec("resnet", 16, 10, 1, 16, g_channels=8, embed_dim=4)
    generator = build_generator(spec).eval()
    assert generator.project.in_features == 16  # z alone: the label does not enter the first layer
    z, labels = torch.randn(1, 16).repeat(2, 1), torch.tensor([3, 7])
    with torch.no_grad():
        assert torch.equal(*generator(z, labels))  # zero-initialised projections: labels ignored at first
        norms = _randomise_conditional_norms(generator)
        assert len(norms) == 2 * len(generator.blocks)  # two cBN per up-block, one shared embedding
        images = generator(z, labels)
        assert (images[0] - images[1]).abs().max() > 1e-3
        # Every cBN contributes: zeroing the projections of any one of them changes the images.
        for norm in norms:
            saved = norm.gain.weight.clone(), norm.bias.weight.clone()
            norm.gain.weight.zero_()
            norm.bias.weight.zero_()
            assert not torch.allclose(generator(z, labels), images)
            norm.gain.weight.copy_(saved[0])
            norm.bias.weight.copy_(saved[1])


def test_conditional_batchnorm_is_gain_and_bias_on_normalised_channels():
    norm = ConditionalBatchNorm2d(3, cond_dim=2).eval()
    with torch.no_grad():
        norm.norm.running_mean.copy_(torch.tensor([1.0, 2.0, 3.0]))
        norm.norm.running_var.fill_(4.0)
        norm.gain.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        norm.bias.weight.copy_(torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.0, 0.0]]))
    x = torch.full((1, 3, 2, 2), 5.0)
    cond = torch.tensor([[0.5, -1.0]])
    normalised = (5.0 - torch.tensor([1.0, 2.0, 3.0])) / torch.sqrt(torch.tensor(4.0 + norm.norm.eps))
    gain, bias = 1 + torch.tensor([0.5, -1.0, -0.5]), torch.tensor([-2.0, 0.5, 0.0])
    expected = (normalised * gain + bias)[None, :, None, None].expand(1, 3, 2, 2)
    assert torch.allclose(norm(x, cond), expected, atol=1e-6)
    plain = ConditionalBatchNorm2d(3, cond_dim=0)  # unconditional: an ordinary affine BatchNorm
    assert plain.gain is None and plain.norm.affine


@pytest.mark.parametrize("arch, resolution", [("dcgan", 16), ("resnet", 16), ("article28", 28)])
def test_discriminator_parts_are_an_unconditional_score_and_a_label_dependent_projection(arch, resolution):
    spec = ModelSpec(arch, 16, 10, 1, resolution, g_channels=8, d_channels=8, embed_dim=4)
    discriminator = build_discriminator(spec).eval()
    images = torch.randn(1, 1, resolution, resolution).repeat(2, 1, 1, 1)
    labels = torch.tensor([0, 1])
    with torch.no_grad():
        unconditional, projection = discriminator(images, labels, return_parts=True)
        assert unconditional.shape == projection.shape == (2,)
        assert torch.isclose(unconditional[0], unconditional[1], atol=1e-6)  # the same image: the same label-free score
        assert (projection[0] - projection[1]).abs() > 1e-4  # the label changes the projection term
        assert torch.allclose(discriminator(images, labels), unconditional + projection)
        # Images without labels (the later semi-supervised use) get the unconditional score alone.
        alone, none = discriminator(images, None, return_parts=True)
        assert none is None and torch.allclose(alone, unconditional)
        assert torch.allclose(discriminator(images, None), unconditional)
    unconditional_d = build_discriminator(ModelSpec(arch, 16, 0, 1, resolution, d_channels=8)).eval()
    with torch.no_grad():
        logits, projection = unconditional_d(images, None, return_parts=True)
    assert projection is None and torch.equal(unconditional_d(images), logits)


def test_resnet_discriminator_is_spectrally_normalised_everywhere_and_residual():
    spec = ModelSpec("resnet", 16, 10, 1, 32, d_channels=8)
    discriminator = build_discriminator(spec)
    layers = [m for m in discriminator.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))]
    assert layers and all(parametrize.is_parametrized(m, "weight") for m in layers)
    without = build_discriminator(ModelSpec("resnet", 16, 10, 1, 32, d_channels=8, spectral_norm=False))
    assert not any(parametrize.is_parametrized(m) for m in without.modules())
    # 32 = 4 * 2**3: three pooling blocks (the first optimised) and one at 4x4; widths 8, 16, 32, 64.
    blocks = list(discriminator.blocks)
    assert [(b.conv1.in_channels, b.conv2.out_channels, b.down, b.first) for b in blocks] == [
        (1, 8, True, True), (8, 16, True, False), (16, 32, True, False), (32, 64, False, False)]
    assert discriminator.head.in_features == discriminator.embed.embedding_dim == 64
    # The optimised first block's residual branch sees the image itself, not ReLU(image): with its
    # shortcut silenced, an all-negative image still differs from a black one.
    first = without.blocks[0]
    x = -torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        first.shortcut.weight.zero_()
        first.shortcut.bias.zero_()
        assert not torch.allclose(first(x), first(torch.zeros_like(x)))


def test_resnet_generator_blocks_are_residual_resize_and_conv():
    generator = build_generator(ModelSpec("resnet", 16, 10, 1, 28, g_channels=8, embed_dim=4))
    assert (generator.base, generator.widths) == (7, [32, 16, 8])
    block = generator.blocks[0]
    assert (block.conv1.kernel_size, block.conv2.kernel_size, block.shortcut.kernel_size) == ((3, 3), (3, 3), (1, 1))
    # The shortcut alone (residual branch's last conv at zero) is upsample + 1x1 conv of the input.
    with torch.no_grad():
        block.conv2.weight.zero_()
        block.conv2.bias.zero_()
        x = torch.randn(2, 32, 7, 7)
        out = block.eval()(x, generator.embed(torch.tensor([1, 2])))
        expected = block.shortcut(x.repeat_interleave(2, 2).repeat_interleave(2, 3))
    assert out.shape == (2, 16, 14, 14) and torch.allclose(out, expected, atol=1e-6)
