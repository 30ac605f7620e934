"""Training: the GAN loop (trainer, losses, DiffAugment, EMA) on top of GAN-agnostic machinery
(dist, precision, checkpoint, tblog)."""
