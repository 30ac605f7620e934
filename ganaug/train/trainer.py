"""The GAN training loop: a stateful Trainer (state_dict / load_state_dict) over DDP-wrapped G and D.

One step is (1) a discriminator update on real vs generated images and (2) a generator update
through a frozen discriminator; what each minimises is the objective's business (objective.py).
The trainer owns the plumbing: the network being trained runs through its DDP wrapper, so its
gradients are averaged over ranks, the other as the bare module, so nothing is reduced for it;
autocast, gradient scaling, clipping and skipping non-finite steps; the EMA; logging and
checkpoints. Statistics stay detached tensors until log time, when they are reduced across ranks.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Callable

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ganaug.config import Config, dump_yaml
from ganaug.data import ImageData
from ganaug.data.loader import ShardedBatches
from ganaug.errors import UserError
from ganaug.files import write_atomic
from ganaug.models import ModelSpec, build_discriminator, build_generator
from ganaug.pixels import to_uint8, to_unit
from ganaug.train.checkpoint import SCHEMA
from ganaug.train.dist import (
    DistInfo,
    all_reduce_,
    any_rank,
    average_floating_buffers_,
    barrier,
    broadcast_flag,
    gather_objects,
)
from ganaug.train.ema import EMA, recalibrate_batchnorm
from ganaug.train.objective import GanObjective, RealBatch
from ganaug.train.precision import Precision
from ganaug.train.rundir import RunDirectory
from ganaug.train.tblog import NullLogger, TensorBoardLogger

log = logging.getLogger(__name__)

GRID_COLUMNS = 8
GRID_MAX_CLASSES = 16
ADA_INTERVAL = 4  # steps between adjustments of the augmentation strength (StyleGAN2-ADA's value)
RANK_SEED_STRIDE = 7919  # each rank's noise, augmentation and dropout: seed + stride * rank
PRIVATE_NOISE_SEED = 10_000  # the EMA statistics' inputs, apart from training's random stream
METRIC_NOISE_SEED = 20_251  # the fixed latents of the in-training metric sample


class TrainingDiverged(UserError):
    """Too many consecutive steps had non-finite gradients."""


class Trainer:
    def __init__(self, cfg: Config, run: RunDirectory, info: DistInfo, data: ImageData, spec: ModelSpec,
                 unlabelled: ImageData | None = None, live_metrics: Callable | None = None):
        self.cfg, self.run, self.info, self.spec = cfg, run, info, spec
        self.device = device = info.device
        self.class_names = data.class_names if spec.num_classes else []
        tc = cfg.train
        self.memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format

        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        self.G = build_generator(spec).to(device, memory_format=self.memory_format)
        self.D = build_discriminator(spec).to(device, memory_format=self.memory_format)
        self.ema = EMA(self.G, tc.ema_decay, tc.ema_rampup) if tc.ema_decay > 0 else None
        # broadcast_buffers=False: D's only buffers are spectral-norm vectors, updated from the weights
        # alone and so equal on every rank; G's BatchNorm statistics are rank-local between checkpoints
        # and averaged over ranks when one is written (see save()).
        ddp = {**_no_buffer_broadcast(), "gradient_as_bucket_view": True,
               "device_ids": [device.index] if device.type == "cuda" else None}
        self.G_train = DDP(self.G, **ddp) if info.distributed else self.G
        self.D_train = DDP(self.D, **ddp) if info.distributed else self.D
        self.D_frozen = self.D  # the G update's D: no reduction for its weights
        if tc.compile:
            self.G_train, self.D_train = torch.compile(self.G_train), torch.compile(self.D_train)
            self.D_frozen = torch.compile(self.D)

        fused = device.type == "cuda"  # one kernel per step on GPUs; multi-tensor foreach on CPUs
        adam = {"betas": (tc.beta1, tc.beta2), "fused": fused or None, "foreach": None if fused else True}
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=tc.lr_g, **adam)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=tc.lr_d, **adam)
        self.precision = Precision(tc.precision, device)
        self.scaler_g, self.scaler_d = self.precision.grad_scaler(), self.precision.grad_scaler()
        self.objective = GanObjective(tc, self.precision.autocast)
        self.batches = ShardedBatches(data, tc.batch_size, info.rank, info.world_size, tc.seed, device,
                                      cfg.data.num_workers, cfg.data.skip_bad)
        self.unlabelled = None
        if unlabelled is not None:  # its own order, so the labelled stream is that of a run without it
            per_rank = len(unlabelled) // info.world_size
            self.unlabelled = ShardedBatches(unlabelled, min(tc.batch_size, per_rank), info.rank, info.world_size,
                                             tc.seed + 1, device, cfg.data.num_workers, cfg.data.skip_bad)
        self.global_batch = tc.batch_size * info.world_size
        self.step = self.images_seen = 0
        self.nonfinite_in_a_row = self.skipped_steps = 0
        self.ada_signs, self.ada_steps = torch.zeros((), device=self.device), 0  # since ADA last adjusted
        self.stop_signal: int | None = None
        self.best_fd = run.checkpoints.best_fd()
        self.last_metrics: dict[str, float] = {}
        self.metrics = None
        if cfg.log.metric_every and info.is_main:
            # A hook (ganaug.evaluate.live.LiveMetrics from the command line): training knows nothing of evaluation.
            assert live_metrics is not None, "log.metric_every needs live_metrics (ganaug.train.run checks it)"
            self.metrics = live_metrics(data, run.features, cfg.log.metric_samples, tc.seed)
        torch.manual_seed(tc.seed + RANK_SEED_STRIDE * info.rank)  # each rank its own noise and augmentation
        self.tb = TensorBoardLogger(run.tb) if info.is_main else NullLogger()

    # ------------------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Everything a resumed run needs. Collective: every rank contributes its RNG state."""
        rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(self.device)
               if self.device.type == "cuda" else None}
        return {
            "schema": SCHEMA,
            "step": self.step,
            "images_seen": self.images_seen,
            "config": self.cfg.to_dict(),
            "model": self.spec.to_dict(),
            "class_names": list(self.class_names),
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": (self.ema.module if self.ema else self.G).state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "objective": self.objective.state_dict(),
            "ada_pending": self._ada_pending_state(),
            "data": self.batches.state_dict(),
            "unlabelled_data": self.unlabelled.state_dict() if self.unlabelled else None,
            "rng": gather_objects(rng),
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        if self.ema:
            self.ema.module.load_state_dict(state["G_ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])
        self.objective.load_state_dict(state["objective"])
        # The saved sum is every rank's: rank 0 carries it, so the next all-reduce counts it once.
        pending = state["ada_pending"]
        self.ada_signs = torch.tensor(float(pending["sign_sum"]) if self.info.rank == 0 else 0.0, device=self.device)
        self.ada_steps = int(pending["steps"])
        self.step, self.images_seen = int(state["step"]), int(state["images_seen"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        rng = state["rng"]
        if len(rng) == self.info.world_size:
            self.batches.load_state_dict(state["data"])
            if self.unlabelled and state.get("unlabelled_data"):
                self.unlabelled.load_state_dict(state["unlabelled_data"])
            torch.set_rng_state(rng[self.info.rank]["cpu"])
            if self.device.type == "cuda" and rng[self.info.rank]["cuda"] is not None:
                torch.cuda.set_rng_state(rng[self.info.rank]["cuda"], self.device)
        else:  # elastic restart with another world size: the data order and noise cannot continue exactly
            log.warning("resuming %d processes from a checkpoint of %d: data order and noise are reseeded",
                        self.info.world_size, len(rng))
            self.batches.load_state_dict({"epoch": state["data"]["epoch"] + 1, "batch": 0})
            torch.manual_seed(self.cfg.train.seed + RANK_SEED_STRIDE * self.info.rank + self.step)

    # ------------------------------------------------------------------------------ one step

    def _to_model_input(self, images_u8: torch.Tensor) -> torch.Tensor:
        return to_unit(images_u8).contiguous(memory_format=self.memory_format)

    def _next_real(self) -> RealBatch:
        images, labels = next(self.batches)
        unlabelled = self._to_model_input(next(self.unlabelled)[0]) if self.unlabelled else None
        return RealBatch(self._to_model_input(images), labels if self.spec.num_classes else None, unlabelled)

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
        real = self._next_real()
        batch = real.images.shape[0]
        # Generated images get the real batch's labels: the class mix of the data (with the mode-seeking
        # term, the second half repeats the first half's, so that each pair of latents shares a class).
        fake_labels = self.objective.paired_labels(real.labels)
        # One generator forward per step (as the DCGAN reference does): D trains on its output
        # detached, then G's update backpropagates through the same graph.
        z = torch.randn(batch, self.spec.z_dim, device=self.device)
        with self.precision.autocast():
            fake = self.G_train(z, fake_labels)

        # (1) Update D: real images against generated ones
        self.D.requires_grad_(True)
        loss_d, stats = self.objective.discriminator_loss(self.D_train, real, fake, fake_labels, self.step)
        norm_d, finite_d = self._optimize(self.opt_d, self.scaler_d, loss_d, self.D)

        # (2) Update G: through D, whose weights are frozen here
        self.D.requires_grad_(False)
        semi_supervised = real.unlabelled is not None and real.labels is not None
        loss_g, g_stats = self.objective.generator_loss(self.D_frozen, fake, fake_labels, semi_supervised, z)
        norm_g, finite_g = self._optimize(self.opt_g, self.scaler_g, loss_g, self.G)
        if self.ema:
            self.ema.update(self.G, self.global_batch, self.images_seen)
        self.step += 1
        self.images_seen += self.global_batch

        if finite_d and finite_g:
            self.nonfinite_in_a_row = 0
        else:
            self.nonfinite_in_a_row += 1
            self.skipped_steps += 1
        return {**stats, **g_stats, "grad_norm/d": norm_d, "grad_norm/g": norm_g}

    def _adjust_augmentation(self) -> None:
        """ADA: every ADA_INTERVAL steps, the mean sign of D's real scores over all ranks moves p."""
        mean = float(all_reduce_(self.ada_signs.clone()) / (self.ada_steps * self.info.world_size))
        self.objective.augment.adjust(mean, self.ada_steps * self.global_batch)
        self.ada_signs, self.ada_steps = torch.zeros((), device=self.device), 0

    def _ada_pending_state(self) -> dict:
        """The signs gathered since ADA's last adjustment, summed over every rank (collective), so a
        run resumed between two adjustments adjusts when and as an uninterrupted one would."""
        return {"sign_sum": float(all_reduce_(self.ada_signs.clone())), "steps": self.ada_steps}

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

    def fit(self) -> bool:
        """Train to train.steps; True when it got there, False when a signal stopped it (saved)."""
        cfg, tc = self.cfg, self.cfg.train
        if self.step >= tc.steps:
            log.info("run already at step %d of %d: nothing to do", self.step, tc.steps)
            return True
        log.info("training %s on %s: world size %d, batch %d per process, global batch %d, precision %s, "
                 "%d images%s, %s", self.spec.arch, self.device, self.info.world_size, tc.batch_size,
                 self.global_batch, self.precision.name, len(self.batches.data),
                 f" + {len(self.unlabelled.data)} unlabelled" if self.unlabelled else "",
                 f"{self.spec.num_classes} classes" if self.spec.num_classes else "unconditional")
        if self.step:
            log.info("resumed at step %d", self.step)
        self.tb.text("config", "```\n" + dump_yaml(cfg) + "\n```", self.step)
        self.tb.text("precision", f"train.precision={tc.precision} runs as **{self.precision.name}**", self.step)
        progress = _progress_bar(tc.steps, self.step, self.info.is_main and cfg.log.progress)
        previous_handlers = self._install_signal_handlers()
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        interval_start, interval_steps = time.perf_counter(), 0
        stopped = False
        try:
            while self.step < tc.steps:
                stats = self.train_step()
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0) + value.float()
                    counts[key] = counts.get(key, 0) + 1
                interval_steps += 1
                progress.update(1)
                if self.objective.augment.adaptive:
                    self.ada_signs, self.ada_steps = self.ada_signs + stats["d/real_sign"], self.ada_steps + 1
                    if self.ada_steps == ADA_INTERVAL:
                        self._adjust_augmentation()
                if self.nonfinite_in_a_row >= tc.max_nonfinite_steps:
                    self._diverged()
                if self.step % cfg.log.every == 0 or self.step == tc.steps:
                    elapsed = time.perf_counter() - interval_start
                    ips = self._log_scalars(sums, counts, interval_steps, elapsed)
                    progress.set_postfix_str(f"{ips:,.0f} img/s")
                    sums, counts, interval_start, interval_steps = {}, {}, time.perf_counter(), 0
                if cfg.log.image_every and self.step % cfg.log.image_every == 0:
                    self.write_grid()
                if cfg.log.metric_every and self.step % cfg.log.metric_every == 0:
                    self._measure()
                stopped = self._stop_requested()
                if stopped or self.step % cfg.ckpt.every == 0 or self.step == tc.steps:
                    self.save()
                if stopped:
                    log.info("stopped by signal %d at step %d; checkpoint saved", self.stop_signal or 0, self.step)
                    break
            if self.step == tc.steps:
                if cfg.log.image_every and self.step % cfg.log.image_every:
                    self.write_grid()  # the final grid, whatever the cadence
                self._log_hparams()
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            progress.close()
            self.tb.close()
        if self.step == tc.steps and self.info.is_main:
            log.info("done: %d steps (%d skipped as non-finite); checkpoint %s", self.step, self.skipped_steps,
                     self.run.checkpoints.last)
        return not stopped

    def _log_scalars(self, sums: dict[str, torch.Tensor], counts: dict[str, int], steps: int,
                     elapsed: float) -> float:
        keys = sorted(sums)
        means = all_reduce_(torch.stack([sums[k] / counts[k] for k in keys])) / self.info.world_size
        images_per_sec = steps * self.global_batch / max(elapsed, 1e-9)
        values = dict(zip(keys, means.tolist()))
        for key, value in values.items():
            if key != "d/real_sign":
                self.tb.scalar(key, value, self.step)
        self.tb.scalar("lr/g", self.opt_g.param_groups[0]["lr"], self.step)
        self.tb.scalar("lr/d", self.opt_d.param_groups[0]["lr"], self.step)
        self.tb.scalar("augment/p", self.objective.augment.p, self.step)
        self.tb.scalar("perf/images_per_sec", images_per_sec, self.step)
        self.tb.scalar("perf/step_ms", 1000 * elapsed / steps, self.step)
        self.tb.scalar("train/skipped_steps", self.skipped_steps, self.step)
        self.tb.flush()
        self.last_metrics.update({k: values[k] for k in ("loss/d", "loss/g") if k in values})
        if not self.cfg.log.progress:  # without a progress bar (batch jobs), a line per interval
            log.info("step %d/%d  loss/d %.3f  loss/g %.3f  p %.2f  %.0f img/s", self.step, self.cfg.train.steps,
                     values["loss/d"], values["loss/g"], self.objective.augment.p, images_per_sec)
        return images_per_sec

    def _log_hparams(self) -> None:
        """The config and the final numbers in TensorBoard's HParams dashboard, to compare runs."""
        hparams = {key: value for section, keys in self.cfg.to_dict().items() for name, value in keys.items()
                   for key in [f"{section}.{name}"]}
        hparams["train.precision_resolved"] = self.precision.name
        final = {f"final/{k}": v for k, v in self.last_metrics.items()}
        final["final/augment_p"] = self.objective.augment.p
        self.tb.hparams(hparams, final, self.step)

    def _diverged(self) -> None:
        state = self.state_dict()
        path = self.run.checkpoints.diverged_path(self.step)
        if self.info.is_main:
            self.run.checkpoints.save_diverged(state)
        raise TrainingDiverged(
            f"{self.nonfinite_in_a_row} consecutive steps with non-finite gradients at step {self.step}; "
            f"state saved to {path} for diagnosis (last.pt is untouched). Try lower learning rates, "
            "train.grad_clip, or train.precision=fp32")

    # ------------------------------------------------------------------------------ outputs

    def _class_balanced_inputs(self, n: int, seed: int, start: int = 0):
        noise = torch.Generator(device=self.device).manual_seed(seed)
        z = torch.randn(n, self.spec.z_dim, generator=noise, device=self.device)
        labels = (torch.arange(start, start + n, device=self.device) % self.spec.num_classes
                  if self.spec.num_classes else None)
        return z, labels

    def refresh_ema_statistics(self) -> None:
        """Give the EMA generator BatchNorm statistics that match its averaged weights."""
        if self.ema:
            recalibrate_batchnorm(self.ema.module, lambda i: self._class_balanced_inputs(256, PRIVATE_NOISE_SEED + i))

    @torch.no_grad()
    def generate(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Images in [-1, 1] from the EMA generator (the raw one without EMA), in eval mode."""
        generator = self.ema.module if self.ema else self.G
        was_training = generator.training
        generator.eval()
        with self.precision.autocast():
            images = generator(z, labels).float()
        generator.train(was_training)
        return images

    def write_grid(self) -> None:
        """A grid of a fixed noise batch: one row per class (up to 16), eight columns."""
        if not self.info.is_main:
            return
        from torchvision.utils import make_grid, save_image

        rows = min(self.spec.num_classes, GRID_MAX_CLASSES) or GRID_COLUMNS
        z, _ = self._class_balanced_inputs(rows * GRID_COLUMNS, self.cfg.train.seed)
        labels = torch.arange(rows, device=self.device).repeat_interleave(GRID_COLUMNS) if self.spec.num_classes else None
        self.refresh_ema_statistics()
        grid = make_grid(self.generate(z, labels).add(1).div(2).clamp(0, 1), nrow=GRID_COLUMNS, padding=2,
                         pad_value=0.5)
        path = self.run.samples / f"step_{self.step:07d}.png"
        try:  # a side output: a grid that cannot be written costs a warning, not the run
            write_atomic(path, lambda f: save_image(grid, f, format="png"))
        except UserError as exc:
            log.warning("%s; training goes on without this grid", exc)
        self.tb.image("samples/ema" if self.ema else "samples/g", grid, self.step)

    def _metric_sample(self) -> torch.Tensor:
        """log.metric_samples uint8 images: fixed latents, class-balanced labels."""
        n, out = self.cfg.log.metric_samples, []
        self.refresh_ema_statistics()
        noise_seed = METRIC_NOISE_SEED + self.cfg.train.seed
        for start in range(0, n, 512):
            z, labels = self._class_balanced_inputs(min(512, n - start), noise_seed + start, start)
            out.append(to_uint8(self.generate(z, labels)).cpu())
        return torch.cat(out)

    def _measure(self) -> None:
        """FD and KID on rank 0; a new best FD writes best.pt (collective: every rank takes part)."""
        fd = math.nan
        if self.metrics is not None:
            values = self.metrics.measure(self._metric_sample(), kid_seed=self.step)
            fd = values["fd"]
            self.tb.scalar("metrics/fd", values["fd"], self.step)
            self.tb.scalar("metrics/kid", values["kid"], self.step)
            self.tb.flush()
            self.last_metrics.update({"metrics/fd": values["fd"], "metrics/kid": values["kid"]})
        if broadcast_flag(self.info.is_main and fd < self.best_fd, self.device):
            self.save(best={"fd": fd, "kid": self.last_metrics.get("metrics/kid"), "step": self.step})

    def save(self, best: dict | None = None) -> None:
        """Write last.pt (or best.pt) atomically on rank 0. Collective."""
        average_floating_buffers_(self.G)
        if self.info.is_main:
            self.refresh_ema_statistics()
        state = self.state_dict()
        if self.info.is_main:
            if best is None:
                self.run.checkpoints.save(state)
            else:
                self.run.checkpoints.save_best(state, best)
                self.best_fd = best["fd"]
                log.info("step %d: new best FD %.3f -> %s", self.step, best["fd"], self.run.checkpoints.best)
        barrier()


def _no_buffer_broadcast() -> dict:
    """DDP's switch for not broadcasting buffers each forward (renamed in newer torch releases)."""
    import inspect

    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
                mininterval=1.0)
