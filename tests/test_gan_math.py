"""The GAN maths on known inputs: losses, R1, LeCam, consistency, EMA, augmentation, projection, ADA.

Each test computes what the formula must give by hand (or by an independent route) and compares,
so a flipped sign, a swapped term, a dropped regulariser or a no-op augmentation fails here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ganaug.config import TrainConfig
from ganaug.models.layers import projection_logits
from ganaug.train import losses
from ganaug.train.augment import POLICIES, AdaptiveAugment, color, cutout, cutout_mask, shift, translation
from ganaug.train.ema import EMA, ema_beta, half_life_images, recalibrate_batchnorm
from ganaug.train.objective import NO_LABEL, GanObjective, RealBatch

# ------------------------------------------------------------------------------ losses


def test_hinge_losses_at_known_logits():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-3.0, 0.0, 0.25])
    # D: mean(relu(1 - real)) + mean(relu(1 + fake)) = (0 + 0.5 + 2)/3 + (0 + 1 + 1.25)/3
    assert losses.discriminator_loss("hinge", real, fake).item() == pytest.approx(2.5 / 3 + 2.25 / 3)
    # swapping real and fake must change it: the terms are not symmetric
    assert losses.discriminator_loss("hinge", fake, real).item() == pytest.approx((4 + 1 + 0.75) / 3 + (3 + 1.5 + 0) / 3)
    # G: -mean(D(G(z))): larger fake scores are better for G
    assert losses.generator_loss("hinge", fake).item() == pytest.approx(-(-3.0 + 0.0 + 0.25) / 3)


def test_non_saturating_bce_losses_at_known_logits():
    real, fake = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0])
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    expected_d = (softplus(-1.0) + softplus(2.0)) / 2 + (softplus(0.5) + softplus(3.0)) / 2
    assert losses.discriminator_loss("bce", real, fake).item() == pytest.approx(expected_d, rel=1e-6)
    assert losses.generator_loss("bce", fake).item() == pytest.approx((softplus(-0.5) + softplus(-3.0)) / 2, rel=1e-6)


@pytest.mark.parametrize("kind", ["hinge", "bce"])
def test_each_network_gains_by_moving_its_scores_the_right_way(kind):
    """D's loss falls as real scores rise and fake scores fall; G's falls as fake scores rise."""
    real = torch.zeros(4, requires_grad=True)
    fake = torch.zeros(4, requires_grad=True)
    losses.discriminator_loss(kind, real, fake).backward()
    assert (real.grad < 0).all() and (fake.grad > 0).all()
    fake_g = torch.zeros(4, requires_grad=True)
    losses.generator_loss(kind, fake_g).backward()
    assert (fake_g.grad < 0).all()


def test_losses_run_in_float32_whatever_the_logits_dtype():
    logits = torch.tensor([0.1, -0.2], dtype=torch.bfloat16)
    assert losses.discriminator_loss("hinge", logits, logits).dtype == torch.float32
    assert losses.generator_loss("bce", logits).dtype == torch.float32
    with pytest.raises(ValueError, match="unknown GAN loss"):
        losses.generator_loss("wgan", logits)


def test_an_unknown_loss_is_named_by_either_network():
    logits = torch.zeros(2)
    with pytest.raises(ValueError, match="unknown GAN loss 'wgan'"):
        losses.discriminator_loss("wgan", logits, logits)
    with pytest.raises(ValueError, match="unknown GAN loss 'wgan'"):
        losses.generator_loss("wgan", logits)


# ------------------------------------------------------------------------------ regularisers


class LinearD(nn.Module):
    """D(x, y) = <w, x> + b (+ <embed(y), x>): the gradient with respect to x is known exactly."""

    def __init__(self, shape=(1, 4, 4), num_classes: int = 0):
        super().__init__()
        size = math.prod(shape)
        self.head = nn.Linear(size, 1)
        self.embed = nn.Embedding(num_classes, size) if num_classes else None

    def forward(self, images, labels=None, return_parts=False):
        return projection_logits(images.flatten(1), self.head, self.embed, labels, return_parts)


def test_r1_of_a_linear_discriminator_is_its_squared_weight_norm():
    torch.manual_seed(0)
    D = LinearD()
    images = torch.randn(5, 1, 4, 4, requires_grad=True)
    penalty = losses.r1_penalty(images, D(images))
    assert penalty.item() == pytest.approx(D.head.weight.square().sum().item(), rel=1e-6)
    penalty.backward()  # create_graph: the penalty trains D (its gradient is 2w)
    assert torch.allclose(D.head.weight.grad, 2 * D.head.weight, atol=1e-6)


def test_r1_sums_the_squared_gradient_over_all_channels_and_averages_over_images():
    """D(x) = sum(x^2) has gradient 2x: R1 = mean_i 4 ||x_i||^2, every channel counted in full."""
    images = torch.tensor([[[[1.0]], [[2.0]], [[0.0]]], [[[0.5]], [[-1.0]], [[3.0]]]], requires_grad=True)  # [2, 3, 1, 1]
    penalty = losses.r1_penalty(images, images.square().sum(dim=(1, 2, 3)))
    assert penalty.item() == pytest.approx((4 * (1 + 4 + 0) + 4 * (0.25 + 1 + 9)) / 2)


def test_lecam_penalises_only_scores_beyond_the_other_sides_average():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.5])
    # relu(real - fake_anchor)^2 with fake_anchor -1: (2^2 + 4^2)/2; relu(real_anchor - fake)^2 with real_anchor 1:
    # (3^2 + 0.5^2)/2
    assert losses.lecam_penalty(real, fake, real_anchor=1.0, fake_anchor=-1.0).item() == pytest.approx(10 + 4.625)
    assert losses.lecam_penalty(torch.tensor([-2.0]), torch.tensor([3.0]), 1.0, -1.0).item() == 0


def test_consistency_is_the_mean_squared_score_difference():
    assert losses.consistency_penalty(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 0.0])).item() == pytest.approx(2.125)


def objective(**train) -> GanObjective:
    return GanObjective(TrainConfig(diffaug=[], **train))


def test_lazy_r1_is_applied_every_r1_every_steps_with_its_gain():
    torch.manual_seed(1)
    D = LinearD()
    real = RealBatch(torch.randn(6, 1, 4, 4), None)
    fake = torch.randn(6, 1, 4, 4)
    gan = objective(r1_gamma=0.4, r1_every=4)
    due, _ = gan.discriminator_loss(D, real, fake, None, step=8)
    not_due, stats = gan.discriminator_loss(D, real, fake, None, step=9)
    assert "reg/r1" not in stats
    norm = D.head.weight.square().sum().item()
    assert (due - not_due).item() == pytest.approx(0.4 / 2 * 4 * norm, rel=1e-5)
    assert not objective(r1_gamma=0.0).r1_due(0) and gan.r1_due(0) and not gan.r1_due(1)


def test_r1_is_taken_on_the_images_before_augmentation():
    """With translation on, R1 still sees D's gradient at the original pixels: for a linear D it
    is the shifted weight pattern's norm, not an error and not zero."""
    torch.manual_seed(2)
    D = LinearD()
    gan = GanObjective(TrainConfig(diffaug=["translation"], r1_gamma=1.0, r1_every=1))
    real = RealBatch(torch.randn(3, 1, 4, 4), None)
    _, stats = gan.discriminator_loss(D, real, torch.randn(3, 1, 4, 4), None, step=0)
    assert 0 < stats["reg/r1"].item() <= D.head.weight.square().sum().item() + 1e-6


def test_the_discriminator_loss_adds_each_enabled_regulariser():
    torch.manual_seed(3)
    D = LinearD()
    real = RealBatch(torch.randn(8, 1, 4, 4), None)
    fake = torch.randn(8, 1, 4, 4)
    plain, _ = objective().discriminator_loss(D, real, fake, None, step=1)
    with torch.no_grad():
        real_scores, fake_scores = D(real.images), D(fake)
    assert plain.item() == pytest.approx(losses.discriminator_loss("hinge", real_scores, fake_scores).item(), rel=1e-6)

    lecam = objective(lecam_weight=2.0)
    with_lecam, stats = lecam.discriminator_loss(D, real, fake, None, step=1)
    expected = losses.lecam_penalty(real_scores, fake_scores, 0.0, 0.0).item()  # anchors start at 0
    assert (with_lecam - plain).item() == pytest.approx(2.0 * expected, rel=1e-5)
    # the anchors moved 1% of the way to this step's mean scores
    assert float(lecam.real_anchor) == pytest.approx(0.01 * real_scores.mean().item(), rel=1e-4)
    assert float(lecam.fake_anchor) == pytest.approx(0.01 * fake_scores.mean().item(), rel=1e-4)

    # without augmentation two "augmentations" are the same images: consistency is exactly zero
    with_cr, stats = objective(consistency_weight=10.0).discriminator_loss(D, real, fake, None, step=1)
    assert stats["reg/consistency"].item() == 0 and with_cr.item() == pytest.approx(plain.item())


def test_the_semi_supervised_term_scores_unlabelled_images_without_the_projection():
    torch.manual_seed(4)
    D = LinearD(num_classes=3)
    labels, fake_labels = torch.tensor([0, 1, 2, 0]), torch.tensor([2, 2, 1, 0])
    real = RealBatch(torch.randn(4, 1, 4, 4), labels, unlabelled=torch.randn(5, 1, 4, 4))
    fake = torch.randn(4, 1, 4, 4)
    loss, stats = objective(unlabelled_weight=0.5).discriminator_loss(D, real, fake, fake_labels, step=1)
    with torch.no_grad():
        conditional = losses.discriminator_loss("hinge", D(real.images, labels), D(fake, fake_labels))
        unconditional = losses.discriminator_loss("hinge", D(real.unlabelled), D(fake))
    assert stats["loss/d_unlabelled"].item() == pytest.approx(unconditional.item(), rel=1e-6)
    assert loss.item() == pytest.approx(conditional.item() + 0.5 * unconditional.item(), rel=1e-6)
    g_loss, _ = objective(unlabelled_weight=0.5).generator_loss(D, fake, fake_labels, semi_supervised=True)
    with torch.no_grad():
        expected = -D(fake, fake_labels).mean() - 0.5 * D(fake).mean()
    assert g_loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_unconditional_models_take_unlabelled_images_as_more_real_ones():
    torch.manual_seed(5)
    D = LinearD()
    real = RealBatch(torch.randn(2, 1, 4, 4), None, unlabelled=torch.randn(3, 1, 4, 4))
    fake = torch.randn(4, 1, 4, 4)
    loss, _ = objective().discriminator_loss(D, real, fake, None, step=1)
    with torch.no_grad():
        expected = losses.discriminator_loss("hinge", D(torch.cat([real.images, real.unlabelled])), D(fake))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_discriminator_reports_its_scores_and_each_enabled_term():
    """Stats are TensorBoard tags (and d/real_sign drives ADA): names and values both matter. A
    weight of 0 computes nothing; a weight below 1 still counts."""
    torch.manual_seed(15)
    D = LinearD()
    real = RealBatch(torch.randn(6, 1, 4, 4), None)
    fake = torch.randn(6, 1, 4, 4)
    with torch.no_grad():
        real_scores, fake_scores = D(real.images), D(fake)
    assert 0 < (real_scores > 0).sum() < 6  # signs of both kinds, so d/real_sign is not trivially +-1

    plain = objective()
    loss, stats = plain.discriminator_loss(D, real, fake, None, step=1)
    assert set(stats) == {"d/real_score", "d/fake_score", "d/real_sign", "loss/d"}
    assert stats["d/real_score"].item() == pytest.approx(real_scores.mean().item(), rel=1e-6)
    assert stats["d/fake_score"].item() == pytest.approx(fake_scores.mean().item(), rel=1e-6)
    assert stats["d/real_sign"].item() == pytest.approx(real_scores.sign().mean().item())
    assert stats["loss/d"].item() == loss.item()
    assert plain.real_anchor == 0.0 and plain.fake_anchor == 0.0  # LeCam off: its averages stay put

    full = objective(lecam_weight=0.5, consistency_weight=0.5, r1_gamma=0.1, r1_every=2)
    loss_full, stats = full.discriminator_loss(D, real, fake, None, step=2)
    assert set(stats) == {"d/real_score", "d/fake_score", "d/real_sign", "loss/d", "reg/lecam", "reg/consistency",
                          "reg/r1"}
    lecam = losses.lecam_penalty(real_scores, fake_scores, 0.0, 0.0).item()
    r1 = D.head.weight.square().sum().item()
    assert stats["reg/lecam"].item() == pytest.approx(lecam, rel=1e-6)
    assert stats["reg/r1"].item() == pytest.approx(r1, rel=1e-6)
    assert stats["reg/consistency"].item() == 0  # no augmentation: both passes see the same images
    assert (loss_full - loss).item() == pytest.approx(0.5 * lecam + 0.1 / 2 * 2 * r1, rel=1e-5)
    assert stats["loss/d"].item() == loss_full.item()


def test_consistency_compares_two_augmentations_of_the_same_labelled_images():
    torch.manual_seed(17)
    D = LinearD(num_classes=3)
    labels, fake_labels = torch.tensor([0, 1, 2, 1]), torch.tensor([2, 0, 1, 1])
    real = RealBatch(torch.randn(4, 1, 4, 4), labels)
    fake = torch.randn(4, 1, 4, 4)
    # without augmentation both passes score the same images with the same labels: exactly zero
    _, stats = objective(consistency_weight=1.0).discriminator_loss(D, real, fake, fake_labels, step=1)
    assert stats["reg/consistency"].item() == 0

    # with translation: the weighted mean squared difference of two translations' scores, drawn in turn
    gan = GanObjective(TrainConfig(diffaug=["translation"], consistency_weight=0.5))
    torch.manual_seed(18)
    loss, stats = gan.discriminator_loss(D, real, fake, fake_labels, step=1)
    images, all_labels = torch.cat([real.images, fake]), torch.cat([labels, fake_labels])
    torch.manual_seed(18)
    first, second = translation(images), translation(images)
    with torch.no_grad():
        scores, again = D(first, all_labels), D(second, all_labels)
    term = (scores - again).square().mean().item()
    assert term > 0.1
    assert stats["reg/consistency"].item() == pytest.approx(term, rel=1e-5)
    hinge = losses.discriminator_loss("hinge", scores[:4], scores[4:]).item()
    assert loss.item() == pytest.approx(hinge + 0.5 * term, rel=1e-5)


def test_the_generator_loss_is_the_conditional_one_unless_asked_and_reports_itself():
    torch.manual_seed(16)
    D = LinearD(num_classes=3)
    fake, labels = torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 2, 1])
    loss, stats = objective(unlabelled_weight=0.5).generator_loss(D, fake, labels)
    with torch.no_grad():
        expected = -D(fake, labels).mean().item()
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert set(stats) == {"loss/g"} and stats["loss/g"].item() == loss.item()


def test_mode_seeking_is_latent_over_image_distance_of_the_batch_halves():
    images = torch.full((4, 1, 2, 2), 0.25)
    images[2:] += 0.5  # each pair (0, 2), (1, 3) differs by 0.5 per pixel
    latents = torch.ones(4, 3)
    latents[2:] += 2.0  # ... and by 2 per latent value (nonzero halves: a sum is not a distance)
    # 1 / (image distance / latent distance + eps) = 1 / (0.5 / 2 + 1e-5)
    assert losses.mode_seeking_penalty(images, latents).item() == pytest.approx(1 / (0.25 + 1e-5), rel=1e-6)
    odd = torch.cat([images, torch.full((1, 1, 2, 2), 9.0)])  # an unpaired last image counts for nothing
    assert losses.mode_seeking_penalty(odd, torch.cat([latents, torch.zeros(1, 3)])).item() == pytest.approx(
        1 / (0.25 + 1e-5), rel=1e-6)


def test_mode_seeking_pushes_the_images_of_a_pair_apart():
    images = torch.tensor([[0.1], [0.2], [0.3], [0.4]]).view(4, 1, 1, 1).requires_grad_(True)
    losses.mode_seeking_penalty(images, torch.randn(4, 5)).backward()
    # the first half is below its partner: lowering it and raising the partner both lower the penalty
    assert (images.grad[:2] > 0).all() and (images.grad[2:] < 0).all()


def test_mode_seeking_pairs_classes_and_adds_its_weighted_term_to_gs_loss():
    torch.manual_seed(17)
    gan = objective(diversity_weight=0.5)
    labels = torch.tensor([3, 1, 0, 2, 2])
    paired = gan.paired_labels(labels)
    assert paired.tolist() == [3, 1, 3, 1, 2]  # pairs (0, 2) and (1, 3) share a class; the odd one is kept
    assert objective(diversity_weight=0.0).paired_labels(labels) is labels and gan.paired_labels(None) is None
    D = LinearD(num_classes=4)
    fake, latents = torch.randn(5, 1, 4, 4), torch.randn(5, 8)
    loss, stats = gan.generator_loss(D, fake, paired, latents=latents)
    with torch.no_grad():
        adversarial = -D(fake, paired).mean().item()
    term = losses.mode_seeking_penalty(fake, latents).item()
    assert stats["reg/mode_seeking"].item() == pytest.approx(term)
    assert loss.item() == pytest.approx(adversarial + 0.5 * term, rel=1e-5)


def test_mode_seeking_needs_one_pair_and_a_weight():
    torch.manual_seed(18)
    D = LinearD(num_classes=4)
    fake, latents, labels = torch.randn(2, 1, 4, 4), torch.randn(2, 8), torch.tensor([1, 1])
    _, stats = objective(diversity_weight=0.5).generator_loss(D, fake, labels, latents=latents)
    assert stats["reg/mode_seeking"].item() == pytest.approx(losses.mode_seeking_penalty(fake, latents).item())
    for lone, weight in ((1, 0.5), (2, 0.0)):  # no pair, or the term off: nothing computed or logged
        _, stats = objective(diversity_weight=weight).generator_loss(D, fake[:lone], labels[:lone],
                                                                     latents=latents[:lone])
        assert set(stats) == {"loss/g"}


def test_the_objective_takes_adaptive_augmentation_from_the_config():
    gan = GanObjective(TrainConfig(diffaug=["translation"], ada_target=0.6, ada_kimg=10.0))
    assert gan.augment.adaptive and gan.augment.p == 0.0
    gan.augment.adjust(real_sign_mean=0.9, images=1000)
    assert gan.augment.p == pytest.approx(0.1)  # 1000 images of 10 kimg


def test_the_objective_makes_every_tensor_on_the_images_device():
    """On the meta device (shapes, no data) a tensor made on the CPU by mistake is an error, as it
    would be beside CUDA images."""
    meta = torch.device("meta")
    D = LinearD(num_classes=3).to(meta)
    labels = torch.zeros(4, dtype=torch.int64, device=meta)
    real = RealBatch(torch.empty(4, 1, 4, 4, device=meta), labels, unlabelled=torch.empty(3, 1, 4, 4, device=meta))
    gan = GanObjective(TrainConfig(lecam_weight=0.5, consistency_weight=0.5))  # every DiffAugment policy
    loss, _ = gan.discriminator_loss(D, real, torch.empty(4, 1, 4, 4, device=meta), labels, step=1)
    g_loss, _ = gan.generator_loss(D, torch.empty(4, 1, 4, 4, device=meta), labels, semi_supervised=True)
    assert loss.device == meta and g_loss.device == meta


# ------------------------------------------------------------------------------ projection


def test_projection_adds_the_label_embedding_inner_product_and_no_label_adds_nothing():
    torch.manual_seed(6)
    D = LinearD(num_classes=3)
    images = torch.randn(2, 1, 4, 4)
    h = images.flatten(1)
    with torch.no_grad():
        base = D.head(h).squeeze(1)
        for label in range(3):
            labels = torch.full((2,), label)
            expected = base + (D.embed.weight[label] * h).sum(1)
            assert torch.allclose(D(images, labels), expected, atol=1e-6)
        assert torch.allclose(D(images, torch.full((2,), NO_LABEL)), base)
        assert torch.allclose(D(images), base)
        unconditional, projection = D(images, torch.tensor([1, NO_LABEL]), return_parts=True)
        assert torch.allclose(unconditional, base) and projection[1] == 0
        assert projection[0].item() == pytest.approx((D.embed.weight[1] * h[0]).sum().item(), rel=1e-5)


def test_the_dcgan_discriminator_is_conditioned_by_projection():
    from ganaug.models import ModelSpec, build_discriminator

    torch.manual_seed(7)
    D = build_discriminator(ModelSpec("dcgan", 8, 4, 1, 16, 8, 8, 8)).eval()
    images = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        a, b = D(images, torch.tensor([0, 0, 0])), D(images, torch.tensor([3, 3, 3]))
        unconditional, projection = D(images, torch.tensor([0, 0, 0]), return_parts=True)
    assert not torch.allclose(a, b)
    assert torch.allclose(a, unconditional + projection, atol=1e-5)


# ------------------------------------------------------------------------------ EMA


def test_ema_after_n_updates_toward_a_fixed_target():
    model = nn.Linear(2, 1, bias=False)
    ema = EMA(model, decay=0.9, rampup=0.0)
    with torch.no_grad():
        ema.module.weight.zero_()
        model.weight.fill_(1.0)
    for n in range(1, 6):
        ema.update(model, batch_images=64, images_seen=64 * n)
        assert ema.module.weight[0, 0].item() == pytest.approx(1 - 0.9**n, rel=1e-6)


def test_ema_horizon_is_in_images_not_steps():
    """One update of 128 images averages like two updates of 64: batch size and world size do not
    change the horizon."""
    assert ema_beta(0.999, 0.0, 128, 10**6) == pytest.approx(ema_beta(0.999, 0.0, 64, 10**6) ** 2)
    assert half_life_images(0.999) == pytest.approx(64 * math.log(0.5) / math.log(0.999))
    assert 0.5 ** (64 / half_life_images(0.999)) == pytest.approx(0.999)


def test_ema_ramp_up_limits_the_half_life_early_on():
    assert ema_beta(0.999, 0.05, 64, 0) == 0.0  # the first update copies the weights
    # after 1000 images the half-life is at most 50 images, far below 0.999's 44k
    assert ema_beta(0.999, 0.05, 64, 1000) == pytest.approx(0.5 ** (64 / 50))
    assert ema_beta(0.999, 0.05, 64, 10**8) == pytest.approx(0.999)  # ramp-up over


def test_ema_ramp_up_counts_the_images_seen_and_is_off_by_default():
    model = nn.Linear(1, 1, bias=False)
    ramped, plain = EMA(model, decay=0.9, rampup=0.5), EMA(model, decay=0.9)
    with torch.no_grad():
        ramped.module.weight.zero_()
        plain.module.weight.zero_()
        model.weight.fill_(1.0)
    # after 64 images the half-life is at most 32 images: beta = 0.5 ** (64 / 32)
    ramped.update(model, batch_images=64, images_seen=64)
    assert ramped.module.weight.item() == pytest.approx(1 - 0.25)
    plain.update(model, batch_images=64, images_seen=64)
    assert plain.module.weight.item() == pytest.approx(1 - 0.9)
    # a half-life under one image still averages: 0.5 ** (1 / 0.5)
    assert ema_beta(0.999, 0.05, 1, 10) == pytest.approx(0.25)


def test_ema_copies_buffers_and_keeps_its_own_weights():
    model = nn.BatchNorm1d(2)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.running_mean.fill_(3.0)
        model.weight.fill_(2.0)
    ema.update(model, batch_images=64, images_seen=10**6)
    assert torch.equal(ema.module.running_mean, model.running_mean)
    assert ema.module.weight[0].item() == pytest.approx(0.5 * 1.0 + 0.5 * 2.0)
    assert not ema.module.weight.requires_grad


class TinyGenerator(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear, self.norm = nn.Linear(2, 3), nn.BatchNorm1d(3)

    def forward(self, z, labels=None):
        return self.norm(self.linear(z))


def test_recalibrated_batchnorm_statistics_average_the_sample_batches():
    torch.manual_seed(25)
    G = TinyGenerator().eval()
    G.norm.running_mean.fill_(7.0)
    G.norm.running_var.fill_(7.0)
    asked = []

    def sample_inputs(i):
        asked.append(i)
        return torch.randn(5, 2, generator=torch.Generator().manual_seed(i)), None

    recalibrate_batchnorm(G, sample_inputs)
    assert asked == list(range(8))
    with torch.no_grad():
        features = [G.linear(torch.randn(5, 2, generator=torch.Generator().manual_seed(i))) for i in range(8)]
    # cumulative averages of each batch's mean and (unbiased) variance, as if over one long run
    assert torch.allclose(G.norm.running_mean, torch.stack([f.mean(0) for f in features]).mean(0), atol=1e-6)
    assert torch.allclose(G.norm.running_var, torch.stack([f.var(0) for f in features]).mean(0), atol=1e-5)
    assert G.norm.num_batches_tracked.item() == 8
    assert G.norm.momentum == 0.1 and not G.training  # both restored
    G.train()
    recalibrate_batchnorm(G, sample_inputs, batches=2)
    assert G.training
    asked.clear()
    plain = nn.Linear(2, 3).eval()
    recalibrate_batchnorm(plain, sample_inputs)
    assert asked == [] and not plain.training  # no BatchNorm: nothing drawn, nothing switched


# ------------------------------------------------------------------------------ augmentation


def test_shift_moves_a_one_hot_pixel_and_drops_what_leaves_the_image():
    image = torch.zeros(2, 1, 6, 6)
    image[:, 0, 2, 3] = 1.0
    out = shift(image, torch.tensor([1, -3]), torch.tensor([2, 0]))
    assert out[0, 0, 3, 5] == 1.0 and out[0].sum() == 1.0  # moved down 1, right 2
    assert out[1].sum() == 0.0  # moved up 3: out of the image, zero filled


def shifted_by_hand(images: torch.Tensor, dy: list[int], dx: list[int]) -> torch.Tensor:
    out = np.zeros(images.shape, dtype=np.float32)
    source = images.numpy()
    _, _, h, w = images.shape
    for i in range(len(images)):
        for y in range(h):
            for x in range(w):
                if 0 <= y - dy[i] < h and 0 <= x - dx[i] < w:
                    out[i, :, y, x] = source[i, :, y - dy[i], x - dx[i]]
    return torch.from_numpy(out)


def test_shift_matches_a_shift_by_hand_for_every_offset_in_and_beyond_the_image():
    h, w = 5, 7
    offsets = torch.tensor([(dy, dx) for dy in range(-h - 1, h + 2) for dx in range(-w - 1, w + 2)])
    images = torch.randn(len(offsets), 2, h, w, generator=torch.Generator().manual_seed(26))
    out = shift(images, offsets[:, 0], offsets[:, 1])
    assert torch.equal(out, shifted_by_hand(images, offsets[:, 0].tolist(), offsets[:, 1].tolist()))


def test_translation_draws_each_offset_up_to_an_eighth_of_the_side_rounded():
    """12 x 20 images: up to 2 rows (1.5 rounded up) and 3 columns (2.5 rounded up) either way."""
    images = torch.randn(64, 1, 12, 20, generator=torch.Generator().manual_seed(27))
    torch.manual_seed(28)
    out = translation(images)
    torch.manual_seed(28)
    dy, dx = torch.randint(-2, 3, (64,)).tolist(), torch.randint(-3, 4, (64,)).tolist()  # in this order
    assert set(dy) == set(range(-2, 3)) and set(dx) == set(range(-3, 4))  # every offset occurs
    assert torch.equal(out, shifted_by_hand(images, dy, dx))


def test_translation_shifts_each_image_by_at_most_an_eighth():
    torch.manual_seed(8)
    images = torch.zeros(64, 1, 16, 16)
    images[:, 0, 8, 8] = 1.0
    out = translation(images)
    ys, xs = torch.nonzero(out[:, 0] == 1.0, as_tuple=True)[1:]
    assert len(ys) == 64  # a shift of at most 2 keeps the centre pixel inside
    assert (ys - 8).abs().max() <= 2 and (xs - 8).abs().max() <= 2
    assert ((ys != 8) | (xs != 8)).any()  # not a no-op


def test_translation_keeps_the_memory_format():
    x = torch.randn(2, 3, 8, 8)
    assert translation(x).is_contiguous()
    assert translation(x.contiguous(memory_format=torch.channels_last)).is_contiguous(memory_format=torch.channels_last)
    assert translation(x.transpose(2, 3)).is_contiguous()  # a view in neither layout comes back contiguous


def test_cutout_zeroes_one_square_of_half_the_side():
    assert cutout_mask(torch.tensor([2]), torch.tensor([3]), (4, 4), (8, 8))[0].sum() == 16
    assert cutout_mask(torch.tensor([-2]), torch.tensor([0]), (4, 4), (8, 8))[0].sum() == 8  # half hangs over
    torch.manual_seed(9)
    out = cutout(torch.ones(200, 1, 8, 8))
    zeroed = (out == 0).sum(dim=(1, 2, 3))
    assert zeroed.max() == 16 and zeroed.min() >= 4  # a 4x4 square whose centre is in the image


def test_cutout_draws_the_squares_corner_so_that_its_centre_is_anywhere_in_the_image():
    """8 x 12 images: a 4 x 6 hole whose top is drawn from -2..5 and left from -3..8."""
    images = torch.randn(64, 2, 8, 12, generator=torch.Generator().manual_seed(29))
    torch.manual_seed(30)
    out = cutout(images)
    torch.manual_seed(30)
    top, left = torch.randint(-2, 6, (64,)).tolist(), torch.randint(-3, 9, (64,)).tolist()
    assert set(top) == set(range(-2, 6)) and set(left) == set(range(-3, 9))
    expected = images.clone()
    for i in range(64):
        expected[i, :, max(top[i], 0): top[i] + 4, max(left[i], 0): left[i] + 6] = 0
    assert torch.equal(out, expected)


def test_color_shifts_brightness_of_a_flat_grey_image_by_the_drawn_amount():
    image = torch.full((3, 1, 4, 4), 0.25)
    torch.manual_seed(10)
    out = color(image)
    torch.manual_seed(10)
    brightness = torch.rand(3, 1, 1, 1) - 0.5  # the first draw; saturation and contrast leave flat grey alone
    assert torch.allclose(out, image + brightness, atol=1e-6)


def test_color_adjusts_brightness_saturation_and_contrast_by_the_drawn_amounts():
    images = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(19)) * 2 - 1
    torch.manual_seed(20)
    out = color(images)
    torch.manual_seed(20)
    brightness, saturation, contrast = (torch.rand(2, 1, 1, 1).double().numpy() for _ in range(3))  # drawn in turn
    x = images.double().numpy() + (brightness - 0.5)  # brightness: -0.5 .. 0.5
    grey = x.mean(axis=1, keepdims=True)  # each pixel's mean over the channels
    x = (x - grey) * (2 * saturation) + grey  # saturation: x0 .. x2 away from that grey
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    x = (x - mean) * (contrast + 0.5) + mean  # contrast: x0.5 .. x1.5 away from the image's mean
    assert np.allclose(out.numpy(), x, atol=1e-5)


def test_augmentations_keep_the_images_dtype():
    images = torch.randn(2, 3, 8, 8).to(torch.bfloat16)
    for name, function in POLICIES.items():
        assert function(images).dtype == torch.bfloat16, name


def test_augmentation_makes_every_tensor_on_the_images_device():
    """On the meta device a random draw or index made on the CPU by mistake is an error, as it would
    be beside CUDA images."""
    images = torch.empty(2, 3, 8, 8, device="meta")
    for p in (1.0, 0.5):
        for name in POLICIES:
            assert AdaptiveAugment([name], p=p)(images).device.type == "meta", (name, p)


@pytest.mark.parametrize("policy", ["translation", "cutout", "color"])
def test_gradients_reach_the_images_through_each_augmentation(policy):
    torch.manual_seed(11)
    x = torch.randn(4, 1, 8, 8, requires_grad=True)
    AdaptiveAugment([policy])(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    if policy == "translation":  # each pixel's gradient is 1 where it stayed in the image, else 0
        assert set(x.grad.unique().tolist()) <= {0.0, 1.0}


# ------------------------------------------------------------------------------ ADA


def test_ada_raises_p_when_d_is_too_sure_of_the_reals_and_lowers_it_otherwise():
    ada = AdaptiveAugment(["translation"], target=0.6, speed_kimg=10)
    assert ada.p == 0.0 and ada.adaptive
    ada.adjust(real_sign_mean=0.9, images=1000)
    assert ada.p == pytest.approx(0.1)
    ada.adjust(real_sign_mean=0.2, images=500)
    assert ada.p == pytest.approx(0.05)
    ada.adjust(real_sign_mean=0.6, images=500)
    assert ada.p == pytest.approx(0.05)  # on target: sign(r_t - target) = 0, p stays (StyleGAN2-ADA)
    ada.adjust(real_sign_mean=0.2, images=10**6)
    assert ada.p == 0.0  # clamped
    ada.adjust(real_sign_mean=1.0, images=10**6)
    assert ada.p == 1.0
    fixed = AdaptiveAugment(["translation"])
    fixed.adjust(real_sign_mean=1.0, images=10**6)
    assert fixed.p == 1.0 and not fixed.adaptive


def test_augmentation_probability_chooses_per_image():
    torch.manual_seed(12)
    images = torch.randn(400, 1, 8, 8)
    assert torch.equal(AdaptiveAugment(["cutout"], p=0.0)(images), images)
    out = AdaptiveAugment(["cutout"], p=0.5)(images)
    changed = (out != images).flatten(1).any(1).float().mean().item()
    assert 0.4 < changed < 0.6
    assert (AdaptiveAugment(["cutout"], p=1.0)(images) != images).flatten(1).any(1).all()


def test_p_zero_costs_nothing_and_p_one_is_plain_diffaugment():
    images = torch.randn(4, 3, 8, 8)
    state = torch.get_rng_state()
    assert AdaptiveAugment(["color", "translation", "cutout"], p=0.0)(images) is images
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn
    torch.manual_seed(23)
    out = AdaptiveAugment(["color", "translation", "cutout"])(images)
    torch.manual_seed(23)
    assert torch.equal(out, cutout(translation(color(images))))  # the policies in order, no choice drawn


def test_ada_speed_defaults_to_the_configs():
    ada = AdaptiveAugment(["translation"], target=0.6)
    ada.adjust(real_sign_mean=1.0, images=1000)
    assert ada.p == pytest.approx(1 / TrainConfig().ada_kimg) == pytest.approx(0.05)


def test_the_objectives_state_round_trips():
    gan = GanObjective(TrainConfig(ada_target=0.6))
    gan.augment.p = 0.3
    gan.real_anchor, gan.fake_anchor = torch.tensor(0.5), -0.25
    again = GanObjective(TrainConfig(ada_target=0.6))
    again.load_state_dict(gan.state_dict())
    assert again.augment.p == 0.3 and again.real_anchor == 0.5 and again.fake_anchor == -0.25


def test_unlabelled_images_do_not_train_the_projection():
    """The label embedding's gradient is the same with or without unlabelled images in the batch:
    they teach D (and through it G) what images look like, not which class is which."""
    grads = []
    for unlabelled in (None, torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(1))):
        torch.manual_seed(13)
        D = LinearD(num_classes=2)
        images = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
        real = RealBatch(images, torch.tensor([0, 1, 1, 0]), unlabelled)
        fake = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(3))
        loss, _ = objective().discriminator_loss(D, real, fake, torch.tensor([1, 1, 0, 0]), step=1)
        loss.backward()
        grads.append((D.embed.weight.grad.clone(), D.head.weight.grad.clone()))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    assert not torch.allclose(grads[0][1], grads[1][1])  # while the unconditional head did learn from them
