"""The GAN objective: which losses and regularisers each update minimises, on which images.

The trainer owns the plumbing (DDP wrappers, optimizers, gradient scaling, which network is frozen)
and hands this class a discriminator to call; everything about the maths lives here: the loss,
augmentation before D (DiffAugment, adaptive or fixed), the lazy R1 schedule and gain, LeCam and
consistency regularisation, and the semi-supervised term on unlabelled images. Images arrive in
float32 in [-1, 1]; D runs under the precision's autocast; every loss is computed in float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ganaug.config import TrainConfig
from ganaug.train import losses
from ganaug.train.augment import AdaptiveAugment

LECAM_DECAY = 0.99  # the moving averages of D's scores that LeCam anchors to (Tseng et al.'s value)
NO_LABEL = -1  # D adds no projection term for this label: an unconditional score


@dataclass
class RealBatch:
    images: torch.Tensor  # float [B, C, H, W] in [-1, 1]
    labels: torch.Tensor | None  # int64 [B]; None for an unconditional model
    unlabelled: torch.Tensor | None = None  # float [U, C, H, W]: real images without labels (conditional models)


class GanObjective:
    def __init__(self, cfg: TrainConfig, autocast: Callable[[], contextlib.AbstractContextManager] | None = None):
        self.kind = cfg.loss
        self.r1_gamma, self.r1_every = cfg.r1_gamma, cfg.r1_every
        self.lecam_weight, self.consistency_weight = cfg.lecam_weight, cfg.consistency_weight
        self.unlabelled_weight = cfg.unlabelled_weight
        self.diversity_weight = cfg.diversity_weight
        self.augment = AdaptiveAugment(cfg.diffaug, target=cfg.ada_target, speed_kimg=cfg.ada_kimg)
        self.autocast = autocast or contextlib.nullcontext
        self.real_anchor = self.fake_anchor = 0.0  # LeCam's moving averages of D's real and fake scores

    def r1_due(self, step: int) -> bool:
        return self.r1_gamma > 0 and step % self.r1_every == 0

    def _scores(self, D, images: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(score with the label's projection term, score without it) of augmented images, in float32."""
        with self.autocast():
            unconditional, projection = D(self.augment(images), labels, return_parts=True)
        unconditional = unconditional.float()
        return (unconditional if projection is None else unconditional + projection.float()), unconditional

    # ---------------------------------------------------------------------------------- (1) D

    def discriminator_loss(self, D, real: RealBatch, fake: torch.Tensor, fake_labels: torch.Tensor | None,
                           step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """D's loss on real images against generated ones (fake: detached, any float dtype)."""
        fake = fake.detach().float()
        if real.labels is None and real.unlabelled is not None:  # unconditional: simply more real images
            real = RealBatch(torch.cat([real.images, real.unlabelled]), None)
        real_images = real.images.detach().requires_grad_(True) if self.r1_due(step) else real.images
        parts = [real_images, fake]
        label_parts = None if real.labels is None else [real.labels, fake_labels]
        unlabelled = real.unlabelled
        if unlabelled is not None:
            parts.insert(1, unlabelled)
            label_parts.insert(1, torch.full((len(unlabelled),), NO_LABEL, dtype=torch.int64, device=fake.device))
        sizes = [len(p) for p in parts]
        images = torch.cat(parts)
        labels = None if label_parts is None else torch.cat(label_parts)
        scores, unconditional = self._scores(D, images, labels)  # one D call for every image
        real_scores, fake_scores = scores[: sizes[0]], scores[-sizes[-1]:]
        loss = losses.discriminator_loss(self.kind, real_scores, fake_scores)
        stats = {"d/real_score": real_scores.detach().mean(), "d/fake_score": fake_scores.detach().mean(),
                 "d/real_sign": real_scores.detach().sign().mean()}
        if unlabelled is not None:
            # The semi-supervised term: real images without labels against the same fakes, both
            # scored without the projection term, so they teach G what images look like.
            u_scores, u_fake = unconditional[sizes[0]: sizes[0] + sizes[1]], unconditional[-sizes[-1]:]
            term = losses.discriminator_loss(self.kind, u_scores, u_fake)
            loss = loss + self.unlabelled_weight * term
            stats["loss/d_unlabelled"] = term.detach()
        if self.lecam_weight > 0:
            term = losses.lecam_penalty(real_scores, fake_scores, self.real_anchor, self.fake_anchor)
            loss = loss + self.lecam_weight * term
            self._update_anchors(real_scores.detach().mean(), fake_scores.detach().mean())
            stats["reg/lecam"] = term.detach()
        if self.consistency_weight > 0:
            again, _ = self._scores(D, images.detach(), labels)  # another random augmentation of the same images
            term = losses.consistency_penalty(scores, again)
            loss = loss + self.consistency_weight * term
            stats["reg/consistency"] = term.detach()
        if self.r1_due(step):
            # Lazy regularisation: every r1_every steps, r1_every times the penalty (StyleGAN2), taken
            # with respect to the images before augmentation (StyleGAN2-ADA).
            term = losses.r1_penalty(real_images, real_scores)
            loss = loss + term * (self.r1_gamma / 2 * self.r1_every)
            stats["reg/r1"] = term.detach()
        stats["loss/d"] = loss.detach()
        return loss, stats

    def _update_anchors(self, real_mean: torch.Tensor, fake_mean: torch.Tensor) -> None:
        # Tensors, not floats: no host sync per step; they enter the next step's penalty as constants.
        self.real_anchor = LECAM_DECAY * self.real_anchor + (1 - LECAM_DECAY) * real_mean
        self.fake_anchor = LECAM_DECAY * self.fake_anchor + (1 - LECAM_DECAY) * fake_mean

    # ---------------------------------------------------------------------------------- (2) G

    def paired_labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """The labels to generate: the real batch's, with the second half repeating the first when the
        mode-seeking term needs pairs of one class (the class mix stays the data's in expectation)."""
        if self.diversity_weight <= 0 or labels is None:
            return labels
        half = len(labels) // 2
        return torch.cat([labels[:half], labels[:half], labels[2 * half:]])

    def generator_loss(self, D, fake: torch.Tensor, fake_labels: torch.Tensor | None,
                       semi_supervised: bool = False, latents: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """G's loss through D (whose weights the trainer has frozen); latents: those of `fake`, for the
        mode-seeking term (fake_labels from paired_labels)."""
        scores, unconditional = self._scores(D, fake.float(), fake_labels)
        loss = losses.generator_loss(self.kind, scores)
        stats = {}
        if semi_supervised:
            loss = loss + self.unlabelled_weight * losses.generator_loss(self.kind, unconditional)
        if self.diversity_weight > 0 and latents is not None and len(fake) >= 2:
            term = losses.mode_seeking_penalty(fake, latents)
            loss = loss + self.diversity_weight * term
            stats["reg/mode_seeking"] = term.detach()
        return loss, {**stats, "loss/g": loss.detach()}

    # ---------------------------------------------------------------------------------- state

    def state_dict(self) -> dict:
        return {"augment": self.augment.state_dict(), "lecam": [float(self.real_anchor), float(self.fake_anchor)]}

    def load_state_dict(self, state: dict) -> None:
        self.augment.load_state_dict(state["augment"])
        self.real_anchor, self.fake_anchor = (float(v) for v in state["lecam"])
