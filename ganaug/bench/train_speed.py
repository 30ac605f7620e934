"""Training throughput: ganaug's trainer against a plain reference loop; bf16 against fp32 where bf16 is native.

The reference is the DCGAN article's algorithm written the obvious way in PyTorch: fp32, eager,
a DataLoader over tensors, BCE, Adam, one generator forward per step reused for both losses.
Both sides train the same networks (`model.arch=article28`, unconditional, 28x28) on the same data
with the same batch, in this process, in alternating rounds, so machine noise hits both alike.
"""

from __future__ import annotations

import itertools
import statistics
import time
from pathlib import Path

import torch
from torch import nn

ARTICLE_OVERRIDES = ["model.arch=article28", "model.conditional=false", "data.resolution=28", "train.batch_size=128",
                  "train.loss=bce", "train.diffaug=none", "log.progress=false", "log.image_every=0"]


def reference_networks(z_dim: int = 100, channels: int = 1) -> tuple[nn.Module, nn.Module]:
    """The article's design (models/article.py, unconditional) as one would first write it: two nn.Sequentials.

    Defined here, not taken from ganaug.models, so the reference neither gains from nor pays for
    anything ganaug's own layers do (tests check that both have the same parameters).
    """
    G = nn.Sequential(
        nn.Linear(z_dim, 7 * 7 * 256, bias=False), nn.BatchNorm1d(7 * 7 * 256), nn.LeakyReLU(0.3),
        nn.Unflatten(1, (256, 7, 7)),
        nn.ConvTranspose2d(256, 128, 5, 1, 2, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.3),
        nn.ConvTranspose2d(128, 64, 5, 2, 2, output_padding=1, bias=False), nn.BatchNorm2d(64), nn.LeakyReLU(0.3),
        nn.ConvTranspose2d(64, channels, 5, 2, 2, output_padding=1, bias=False), nn.Tanh(),
    )
    D = nn.Sequential(
        nn.Conv2d(channels, 64, 5, 2, 2), nn.LeakyReLU(0.3), nn.Dropout(0.3),
        nn.Conv2d(64, 128, 5, 2, 2), nn.LeakyReLU(0.3), nn.Dropout(0.3),
        nn.Flatten(), nn.Linear(128 * 7 * 7, 1),
    )
    return G, D


class ReferenceLoop:
    """The article's training step, as one would first write it."""

    def __init__(self, images_u8: torch.Tensor, batch_size: int = 128, z_dim: int = 100):
        torch.manual_seed(0)
        self.G, self.D = reference_networks(z_dim, images_u8.shape[1])
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
        dataset = torch.utils.data.TensorDataset(images_u8.float() / 127.5 - 1)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
        self.batches = itertools.chain.from_iterable(itertools.repeat(loader))
        self.bce, self.z_dim, self.batch_size = nn.BCEWithLogitsLoss(), z_dim, batch_size

    def step(self) -> None:
        (real,) = next(self.batches)
        fake = self.G(torch.randn(real.shape[0], self.z_dim))
        real_out, fake_out = self.D(real), self.D(fake.detach())
        d_loss = self.bce(real_out, torch.ones_like(real_out)) + self.bce(fake_out, torch.zeros_like(fake_out))
        self.opt_d.zero_grad()
        d_loss.backward()
        self.opt_d.step()
        g_out = self.D(fake)
        g_loss = self.bce(g_out, torch.ones_like(g_out))
        self.opt_g.zero_grad()
        g_loss.backward()
        self.opt_g.step()


def make_trainer(overrides: list[str], run_dir: Path):
    from ganaug.config import load_config
    from ganaug.data import load_dataset
    from ganaug.models import ModelSpec
    from ganaug.train.dist import DistInfo
    from ganaug.train.rundir import RunDirectory
    from ganaug.train.trainer import Trainer

    cfg = load_config(None, overrides)
    data = load_dataset(cfg.data)
    return Trainer(cfg, RunDirectory(run_dir), DistInfo(), data, ModelSpec.from_config(cfg.model, data)), data


def images_per_second(step, batch_size: int, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def compare(contenders: dict, batch_size: int, steps: int, rounds: int) -> dict[str, float]:
    """Median images/s of each contender over alternating rounds (after one warm-up step each)."""
    for step in contenders.values():
        step()
    results = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, step in contenders.items():
            results[name].append(images_per_second(step, batch_size, steps))
    return {name: statistics.median(values) for name, values in results.items()}


def bench_training(run_dir: Path, steps: int, rounds: int, precision: str) -> dict:
    """ganaug's trainer at `precision` (what train.precision=auto picks on this machine) against the
    reference loop; where that is bf16, fp32 too, for bf16's own speed-up. A CPU without bf16 units
    would only emulate it (tens of times slower): no user would train so, and the bench would not end."""
    trainer, data = make_trainer([*ARTICLE_OVERRIDES, f"train.precision={precision}"], run_dir / precision)
    contenders = {"reference": ReferenceLoop(data.images).step, "ganaug": trainer.train_step}
    if precision != "fp32":
        contenders["ganaug_fp32"] = make_trainer([*ARTICLE_OVERRIDES, "train.precision=fp32"], run_dir / "fp32")[0].train_step
    speeds = compare(contenders, 128, steps, rounds)
    results = {"train_precision": precision, "train_images_per_sec": speeds,
               "train_speedup_vs_reference": speeds["ganaug"] / speeds["reference"]}
    if precision == "bf16":
        results["bf16_speedup_vs_fp32"] = speeds["ganaug"] / speeds["ganaug_fp32"]
    return results
