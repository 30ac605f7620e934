"""The GAN training loop: a stateful Trainer (state_dict / load_state_dict) over DDP-wrapped G and D.

One step is (1) a discriminator update on real vs generated images and (2) a generator update
through a frozen discriminator. The network being trained runs through its DDP wrapper, so its
gradients are averaged over ranks; the other one runs as the bare module, so nothing is reduced
for it. Statistics stay detached tensors until log time, when they are reduced across ranks.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ganaug.config import Config, diffaug_policies
from ganaug.data import ImageData
from ganaug.data.loader import ShardedBatches
from ganaug.errors import UserError
from ganaug.models import ModelSpec, build_discriminator, build_generator
from ganaug.train import checkpoint
from ganaug.train.diffaug import DiffAugment
from ganaug.train.dist import (
    DistInfo,
    all_reduce_,
    any_rank,
    average_floating_buffers_,
    barrier,
    gather_objects,
)
from ganaug.train.ema import EMA, recalibrate_batchnorm
from ganaug.train.losses import GanLoss
from ganaug.train.precision import Precision
from ganaug.train.tblog import NullLogger, TensorBoardLogger

log = logging.getLogger(__name__)

CHECKPOINT_SCHEMA = 1
GRID_COLUMNS = 8
GRID_MAX_CLASSES = 16


class TrainingDiverged(UserError):
    """Too many consecutive steps had non-finite gradients."""


def model_spec(cfg: Config, data: ImageData) -> ModelSpec:
    """The networks' shape, from the config and what the data turned out to be."""
    want = cfg.model.conditional
    if want == "true" and data.labels is None:
        raise UserError(f"model.conditional=true but data.source {cfg.data.source!r} has no labels")
    conditional = data.labels is not None and want != "false"
    return ModelSpec(cfg.model.arch, cfg.model.z_dim, data.num_classes if conditional else 0, data.channels,
                     data.resolution, cfg.model.g_channels, cfg.model.d_channels, cfg.model.embed_dim,
                     cfg.model.spectral_norm)


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, info: DistInfo, data: ImageData, spec: ModelSpec):
        self.cfg, self.run_dir, self.info, self.spec = cfg, run_dir, info, spec
        self.device = device = info.device
        self.class_names = data.class_names if spec.num_classes else []
        tc = cfg.train
        self.memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format

        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        self.G = build_generator(spec).to(device, memory_format=self.memory_format)
        self.D = build_discriminator(spec).to(device, memory_format=self.memory_format)
        self.ema = EMA(self.G, tc.ema_decay) if tc.ema_decay > 0 else None
        # broadcast_buffers=False: D's only buffers are spectral-norm vectors, updated from the weights
        # alone and so equal on every rank; G's BatchNorm statistics are rank-local between checkpoints
        # and averaged over ranks when one is written (see save()).
        ddp = {**_no_buffer_broadcast(), "gradient_as_bucket_view": True,
               "device_ids": [device.index] if device.type == "cuda" else None}
        self.G_train = DDP(self.G, **ddp) if info.distributed else self.G
        self.D_train = DDP(self.D, **ddp) if info.distributed else self.D
        if tc.compile:
            self.G_train, self.D_train = torch.compile(self.G_train), torch.compile(self.D_train)

        fused = device.type == "cuda"  # one kernel per step on GPUs; multi-tensor foreach on CPUs
        adam = {"betas": (tc.beta1, tc.beta2), "fused": fused or None, "foreach": None if fused else True}
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=tc.lr_g, **adam)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=tc.lr_d, **adam)
        self.precision = Precision(tc.precision, device)
        self.scaler_g, self.scaler_d = self.precision.grad_scaler(), self.precision.grad_scaler()
        self.loss = GanLoss(tc.loss)
        self.augment = DiffAugment(diffaug_policies(tc.diffaug))
        self.batches = ShardedBatches(data, tc.batch_size, info.rank, info.world_size, tc.seed, device,
                                      cfg.data.num_workers, cfg.data.skip_bad)
        self.step = 0
        self.nonfinite_in_a_row = 0
        self.skipped_steps = 0
        self.stop_signal: int | None = None
        torch.manual_seed(tc.seed + 7919 * info.rank)  # each rank its own noise, augmentation and dropout
        self.tb = TensorBoardLogger(run_dir / "tb") if info.is_main else NullLogger()

    # ------------------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Everything a resumed run needs. Collective: every rank contributes its RNG state."""
        rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(self.device)
               if self.device.type == "cuda" else None}
        return {
            "schema": CHECKPOINT_SCHEMA,
            "step": self.step,
            "config": self.cfg.to_dict(),
            "model": self.spec.to_dict(),
            "class_names": list(self.class_names),
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": (self.ema.module if self.ema else self.G).state_dict(),
            "ema_updates": self.ema.updates if self.ema else 0,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "data": self.batches.state_dict(),
            "rng": gather_objects(rng),
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        if self.ema:
            self.ema.load_state_dict({"module": state["G_ema"], "updates": state["ema_updates"]})
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])
        self.step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        rng = state["rng"]
        if len(rng) == self.info.world_size:
            self.batches.load_state_dict(state["data"])
            torch.set_rng_state(rng[self.info.rank]["cpu"])
            if self.device.type == "cuda" and rng[self.info.rank]["cuda"] is not None:
                torch.cuda.set_rng_state(rng[self.info.rank]["cuda"], self.device)
        else:  # elastic restart with another world size: the data order and noise cannot continue exactly
            log.warning("resuming %d processes from a checkpoint of %d: data order and noise are reseeded",
                        self.info.world_size, len(rng))
            self.batches.load_state_dict({"epoch": state["data"]["epoch"] + 1, "batch": 0})
            torch.manual_seed(self.cfg.train.seed + 7919 * self.info.rank + self.step)

    # ------------------------------------------------------------------------------ one step

    def _to_model_input(self, images_u8: torch.Tensor) -> torch.Tensor:
        images = images_u8.to(torch.float32).div_(127.5).sub_(1.0)
        return images.contiguous(memory_format=self.memory_format)

    def _optimize(self, optimizer, scaler, loss: torch.Tensor, module) -> tuple[torch.Tensor, bool]:
        """backward, unscale, clip, step, update, zero_grad; a non-finite gradient skips the step."""
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        limit = self.cfg.train.grad_clip or math.inf
        norm = torch.nn.utils.clip_grad_norm_(module.parameters(), limit, foreach=True)
        # A host sync per update: the price of skipping non-finite steps (fp16's GradScaler makes the
        # same one). After DDP's all-reduce the norm is identical on every rank, so all skip together.
        finite = bool(torch.isfinite(norm))
        if finite or scaler.is_enabled():  # an enabled GradScaler skips a non-finite step itself
            scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return norm.detach(), finite

    def train_step(self) -> dict[str, torch.Tensor]:
        tc = self.cfg.train
        real_u8, labels = next(self.batches)
        real = self._to_model_input(real_u8)
        labels = labels if self.spec.num_classes else None
        batch = real.shape[0]

        # One generator forward per step (as the DCGAN reference does): D trains on its output
        # detached, then G's update backpropagates through the same graph.
        z = torch.randn(batch, self.spec.z_dim, device=self.device)
        with self.precision.autocast():
            fake = self.G_train(z, labels)

        # (1) Update D: minimise the discriminator loss on real vs generated images
        self.D.requires_grad_(True)
        apply_r1 = tc.r1_gamma > 0 and self.step % tc.r1_every == 0
        real_aug = self.augment(real)
        if apply_r1:
            real_aug = real_aug.detach().requires_grad_(True)
        both_labels = None if labels is None else torch.cat([labels, labels])
        with self.precision.autocast():
            logits = self.D_train(torch.cat([real_aug, self.augment(fake.detach().float())]), both_labels)
        real_logits, fake_logits = logits.float().chunk(2)
        loss_d = self.loss.discriminator(real_logits, fake_logits)
        if apply_r1:  # lazy regularisation: a stronger penalty every r1_every steps
            loss_d = loss_d + GanLoss.r1_penalty(real_aug, real_logits) * (tc.r1_gamma / 2 * tc.r1_every)
        norm_d, finite_d = self._optimize(self.opt_d, self.scaler_d, loss_d, self.D)

        # (2) Update G: minimise the generator loss through D, whose weights are frozen here
        self.D.requires_grad_(False)
        with self.precision.autocast():
            fake_logits_g = self.D(self.augment(fake.float()), labels)  # the bare D: no reduction for its weights
        loss_g = self.loss.generator(fake_logits_g)
        norm_g, finite_g = self._optimize(self.opt_g, self.scaler_g, loss_g, self.G)
        if self.ema:
            self.ema.update(self.G)
        self.step += 1

        if finite_d and finite_g:
            self.nonfinite_in_a_row = 0
        else:
            self.nonfinite_in_a_row += 1
            self.skipped_steps += 1
        return {
            "loss/d": loss_d.detach(), "loss/g": loss_g.detach(),
            "d/real_score": real_logits.detach().mean(), "d/fake_score": fake_logits.detach().mean(),
            "grad_norm/d": norm_d, "grad_norm/g": norm_g,
        }

    # ------------------------------------------------------------------------------ the loop

    def _install_signal_handlers(self) -> dict:
        """SIGTERM/SIGINT (cluster preemption, Ctrl-C) finish the step, save and exit 0.

        A repeated SIGTERM changes nothing (schedulers and torchrun may both deliver one), so the
        save is never cut short; a second Ctrl-C gets the previous handler and interrupts at once.
        """
        previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}

        def request_stop(signum, _frame):
            self.stop_signal = self.stop_signal or signum
            if signum == signal.SIGINT:
                signal.signal(signum, previous[signum])

        for signum in previous:
            signal.signal(signum, request_stop)
        return previous

    def _stop_requested(self) -> bool:
        if not self.info.distributed:
            return self.stop_signal is not None
        # Ranks may see a signal at different steps; they must agree, or one would wait forever.
        return any_rank(self.stop_signal is not None, self.device)

    def fit(self) -> None:
        cfg, tc = self.cfg, self.cfg.train
        if self.step >= tc.steps:
            log.info("run already at step %d of %d: nothing to do", self.step, tc.steps)
            return
        log.info("training %s on %s: world size %d, batch %d per process, global batch %d, precision %s, "
                 "%d images, %s", self.spec.arch, self.device, self.info.world_size, tc.batch_size,
                 tc.batch_size * self.info.world_size, self.precision.name, len(self.batches.data),
                 f"{self.spec.num_classes} classes" if self.spec.num_classes else "unconditional")
        if self.step:
            log.info("resumed at step %d", self.step)
        self.tb.text("config", "```\n" + _yaml(cfg) + "\n```", self.step)
        progress = _progress_bar(tc.steps, self.step, self.info.is_main and cfg.log.progress)
        previous_handlers = self._install_signal_handlers()
        sums: dict[str, torch.Tensor] = {}
        interval_start, interval_steps = time.perf_counter(), 0
        try:
            while self.step < tc.steps:
                stats = self.train_step()
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0) + value.float()
                interval_steps += 1
                progress.update(1)
                if self.nonfinite_in_a_row >= tc.max_nonfinite_steps:
                    self._diverged()
                if self.step % cfg.log.every == 0 or self.step == tc.steps:
                    elapsed = time.perf_counter() - interval_start
                    ips = self._log_scalars(sums, interval_steps, elapsed)
                    progress.set_postfix_str(f"{ips:,.0f} img/s")
                    sums, interval_start, interval_steps = {}, time.perf_counter(), 0
                if cfg.log.image_every and self.step % cfg.log.image_every == 0:
                    self.write_grid()
                if cfg.log.metric_every and self.step % cfg.log.metric_every == 0:
                    self._log_metrics()
                stop = self._stop_requested()
                if stop or self.step % cfg.ckpt.every == 0 or self.step == tc.steps:
                    self.save()
                if stop:
                    log.info("stopped by signal %d at step %d; checkpoint saved", self.stop_signal or 0, self.step)
                    break
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            progress.close()
            self.tb.close()
        if self.step == tc.steps and self.info.is_main:
            log.info("done: %d steps (%d skipped as non-finite); checkpoint %s", self.step, self.skipped_steps,
                     self.run_dir / "checkpoints" / "last.pt")

    def _log_scalars(self, sums: dict[str, torch.Tensor], steps: int, elapsed: float) -> float:
        keys = sorted(sums)
        means = all_reduce_(torch.stack([sums[k] for k in keys]) / steps) / self.info.world_size
        images_per_sec = steps * self.cfg.train.batch_size * self.info.world_size / max(elapsed, 1e-9)
        for key, value in zip(keys, means.tolist()):
            self.tb.scalar(key, value, self.step)
        self.tb.scalar("lr/g", self.opt_g.param_groups[0]["lr"], self.step)
        self.tb.scalar("lr/d", self.opt_d.param_groups[0]["lr"], self.step)
        self.tb.scalar("perf/images_per_sec", images_per_sec, self.step)
        self.tb.scalar("perf/step_ms", 1000 * elapsed / steps, self.step)
        self.tb.scalar("train/skipped_steps", self.skipped_steps, self.step)
        self.tb.flush()
        if not self.cfg.log.progress:  # without a progress bar (batch jobs), a line per interval
            values = dict(zip(keys, means.tolist()))
            log.info("step %d/%d  loss/d %.3f  loss/g %.3f  %.0f img/s", self.step, self.cfg.train.steps,
                     values["loss/d"], values["loss/g"], images_per_sec)
        return images_per_sec

    def _diverged(self) -> None:
        path = self.run_dir / "checkpoints" / f"diverged_step_{self.step:07d}.pt"
        state = self.state_dict()
        if self.info.is_main:
            checkpoint.save_atomic(state, path)
        raise TrainingDiverged(
            f"{self.nonfinite_in_a_row} consecutive steps with non-finite gradients at step {self.step}; "
            f"state saved to {path} for diagnosis (last.pt is untouched). Try lower learning rates, "
            "train.grad_clip, or train.precision=fp32")

    # ------------------------------------------------------------------------------ outputs

    def refresh_ema_statistics(self) -> None:
        """Give the EMA generator BatchNorm statistics that match its averaged weights."""
        if not self.ema:
            return
        noise = torch.Generator(device=self.device)

        def inputs(i: int):
            noise.manual_seed(10_000 + i)  # a private stream: training's RNG is left untouched
            z = torch.randn(256, self.spec.z_dim, generator=noise, device=self.device)
            labels = torch.arange(256, device=self.device) % self.spec.num_classes if self.spec.num_classes else None
            return z, labels

        recalibrate_batchnorm(self.ema.module, inputs)

    @torch.no_grad()
    def write_grid(self) -> None:
        """A grid of a fixed noise batch: one row per class (up to 16), eight columns."""
        if not self.info.is_main:
            return
        from torchvision.utils import make_grid, save_image

        rows = min(self.spec.num_classes, GRID_MAX_CLASSES) or GRID_COLUMNS
        noise = torch.Generator(device=self.device).manual_seed(self.cfg.train.seed)
        z = torch.randn(rows * GRID_COLUMNS, self.spec.z_dim, generator=noise, device=self.device)
        labels = torch.arange(rows, device=self.device).repeat_interleave(GRID_COLUMNS) if self.spec.num_classes else None
        self.refresh_ema_statistics()
        generator = self.ema.module if self.ema else self.G
        was_training = generator.training
        images = generator.eval()(z, labels).float().add(1).div(2).clamp(0, 1)
        generator.train(was_training)
        grid = make_grid(images, nrow=GRID_COLUMNS, padding=2, pad_value=0.5)
        folder = self.run_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        save_image(grid, folder / f"step_{self.step:07d}.png")
        self.tb.image("samples/ema" if self.ema else "samples/g", grid, self.step)

    def _log_metrics(self) -> None:
        from ganaug.evaluate.live import log_training_metrics

        log_training_metrics(self)

    def save(self) -> None:
        """Write last.pt atomically (and a hard-linked step_NNNNNNN.pt), on rank 0. Collective."""
        average_floating_buffers_(self.G)
        if self.info.is_main:
            self.refresh_ema_statistics()
        state = self.state_dict()
        if self.info.is_main:
            folder = self.run_dir / "checkpoints"
            last = folder / "last.pt"
            checkpoint.save_atomic(state, last)
            if self.cfg.ckpt.keep:
                _link_or_copy(last, folder / f"step_{self.step:07d}.pt")
                checkpoint.prune(folder, self.cfg.ckpt.keep)
        barrier()


def _no_buffer_broadcast() -> dict:
    """DDP's switch for not broadcasting buffers each forward (renamed in newer torch releases)."""
    import inspect

    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link costs no space or time; replacing last.pt later leaves the link's content alone."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        import shutil

        shutil.copyfile(source, target)


def _yaml(cfg: Config) -> str:
    from ganaug.config import dump_yaml

    return dump_yaml(cfg)


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
                mininterval=1.0)
