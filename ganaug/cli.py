"""The `ganaug` command line: it parses arguments, calls the library, and maps errors to exit codes.

Each subcommand's arguments are declared here, and its implementation is imported only when it
runs, so `ganaug --help` and `ganaug sample` never import torch. A `UserError` anywhere ends in one
line on stderr and exit status 2; a missing optional dependency names the extra to install (2);
running out of memory, on the GPU or the host, says what to lower (2); a signal that stops the
work gives 128 + its number (Ctrl-C 130, SIGTERM 143). Nothing in the library imports this module.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
from pathlib import Path

from ganaug import __version__
from ganaug.errors import UserError, leave_for_launcher, one_line


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (`ganaug sample: error: ...`), like every other error."""

    def error(self, message: str):
        command = " ".join(self.prog.split()[:2])  # `ganaug evaluate metrics` reports as `ganaug evaluate`
        _report(f"{command}: error: {one_line(message)} (see {self.prog} --help)")
        self.exit(2)


# ---------------------------------------------------------------------------------- argument types


def whole_number(low: int, high: int | None = None, what: str = ""):
    """An argparse type: a whole number in low..high (high None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low and (high is None or low == 1):
            raise argparse.ArgumentTypeError(f"{value} must be positive" if low == 1 else f"{value} is below {low}")
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {what or f'{low}..{high}'}")
        return value

    return parse


positive_int = whole_number(1)
thread_count = whole_number(0, 1024, "0..1024 (0: one per physical core)")
seed = whole_number(0, 2**63 - 1, "0..2^63-1")


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def fraction(text: str) -> float:
    value = finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1")
    return value


# scikit-learn's train_test_split takes numpy RandomState seeds, which stop at 2^32 - 1.
split_seed = whole_number(0, 2**32 - 1, "0..2^32-1 (the seeds scikit-learn's split takes)")
step_count = whole_number(1, 10**9, "1..10^9 (the bound of train.steps)")
epoch_count = whole_number(0, 10**4, "0..10^4")


def seed_list(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]: distinct seeds."""
    try:
        values = [split_seed(part.strip()) for part in text.split(",") if part.strip()]
    except argparse.ArgumentTypeError as exc:
        raise UserError(f"--split-seeds: {exc}") from None
    if not values or len(set(values)) != len(values):
        raise UserError(f"--split-seeds: {text!r} must list distinct seeds (e.g. 0,1,2)")
    return values


# ---------------------------------------------------------------------------------- train


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a GAN (one process, or many under torchrun)",
                       description="Train a class-conditional GAN. Run under `torchrun -m ganaug train` "
                                   "for DDP; a run directory with checkpoints/last.pt is resumed.")
    p.add_argument("--run-dir", help="run directory (config.yaml, checkpoints/, tb/, samples/)")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. train.steps=500")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--help-config", action="store_true", help="list every config key with type, default and doc")
    p.set_defaults(run=_run_train, preflight=_preflight_train)


def _run_train(args) -> int:
    from ganaug.config import dump_yaml, help_config

    if args.help_config:
        print(help_config())
        return 0
    if not args.run_dir and not args.dry_run:
        raise UserError("--run-dir is required")
    from ganaug.train import resolve_config, run

    cfg = resolve_config(Path(args.run_dir) if args.run_dir else None, args.config, args.overrides)
    if args.dry_run:
        print(dump_yaml(cfg), end="")
        return 0
    live_metrics = None
    if cfg.log.metric_every:  # evaluation's imports cost seconds: only where they are used
        from ganaug.evaluate.live import LiveMetrics

        live_metrics = LiveMetrics
    run(cfg, args.run_dir, config_file=args.config, live_metrics=live_metrics)
    return 0


def _preflight_train(args) -> None:
    if args.help_config or args.dry_run:
        return
    if not args.run_dir:
        raise UserError("--run-dir is required")
    from ganaug.train.api import preflight as check_run

    check_run(Path(args.run_dir), args.config, args.overrides)


# ---------------------------------------------------------------------------------- export


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a generator to one verified ONNX file",
                       description="Export the (EMA) generator of a run or checkpoint to ONNX, verified "
                                   "against PyTorch before the file is written.")
    p.add_argument("source", help="run directory or checkpoint file")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"))
    p.add_argument("--weights", default="ema", choices=("ema", "raw"), help="EMA generator (default) or the raw one")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the tested one)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("--allow-degraded", action="store_true",
                   help="write an fp16/int8 model even if it exceeds the documented error thresholds")
    p.set_defaults(run=_run_export)


def _run_export(args) -> int:
    import logging

    from ganaug.export import export_model

    result = export_model(args.source, args.out, precision=args.precision, weights=args.weights,
                          opset=args.opset, force=args.force, allow_degraded=args.allow_degraded)
    logging.getLogger("ganaug.export").info("%s", result.summary())
    return 0


# ---------------------------------------------------------------------------------- sample


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="write labelled synthetic images with onnxruntime (no torch)",
                       description="Generate images from a ganaug ONNX model into an ImageFolder tree or .npz "
                                   "shards. Image i depends only on (model, seed, i); re-running completes "
                                   "an interrupted run.")
    p.add_argument("model", help="ganaug ONNX model")
    image_count = whole_number(1, 2**63 - 1, "1..2^63-1")  # image indices are int64 everywhere
    p.add_argument("--n", type=image_count, help="number of images (class-balanced when conditional)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", default="png", choices=("png", "npz"))
    p.add_argument("--seed", type=int, default=0, help="latent seed: any integer (taken modulo 2^64)")
    p.add_argument("--classes", help="comma-separated class names to generate (default: all)")
    p.add_argument("--per-class", type=image_count, help="images per class (instead of --n)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--provider", default="auto", choices=("auto", "cpu", "cuda", "tensorrt"))
    p.add_argument("--threads", type=thread_count, default=0, help="inference threads (0: physical cores)")
    p.add_argument("--shard-size", type=positive_int, default=10000, help="images per .npz shard")
    p.add_argument("--shard", metavar="INDEX/COUNT",
                   help="write part INDEX of COUNT of the set (processes 0 .. COUNT-1 into one --out; see docs)")
    p.add_argument("--truncation", type=finite_float, default=0.0,
                   help="truncation trick: redraw latent values beyond this magnitude (0 disables)")
    p.add_argument("--filter", metavar="CLASSIFIER.onnx",
                   help="keep only the images this classifier gives their class with --min-confidence (see docs)")
    p.add_argument("--min-confidence", type=finite_float, metavar="TAU",
                   help="with --filter: the probability of its class an image needs to be kept, in (0, 1]")
    p.add_argument("--overwrite", action="store_true", help="replace output made with another model or seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_sample)


def _run_sample(args) -> int:
    from ganaug.sampler.entry import main as sample_main

    return sample_main(args)


# ---------------------------------------------------------------------------------- augment


def _add_augment(sub) -> None:
    p = sub.add_parser("augment", help="the training set that measurably makes a classifier best",
                       description="From labelled images (and optionally unlabelled ones and a generator), write "
                                   "the training set that cross-validation on the labelled images says is best: an "
                                   "ImageFolder tree, manifest.csv, teacher.onnx, report.md. Re-running resumes.")
    p.add_argument("--labelled", required=True, help="labelled images: digits | mnist5k | animal_shape | a class-folder tree | "
                                                     ".npz with labels | mnist | fashion_mnist | cifar10")
    p.add_argument("--unlabelled", help="unlabelled images, any source kind (streamed when large)")
    p.add_argument("--model", help="a ganaug generator ONNX of the same classes (default: augment trains its own)")
    p.add_argument("--out", required=True, help="output directory (empty or new; work files go to OUT.work)")
    p.add_argument("--work-dir", help="where the state, fold generators and teachers go (default: OUT.work)")
    p.add_argument("--seed", type=seed, default=0, help="folds, classifiers and latents")
    p.add_argument("--shard", metavar="INDEX/COUNT", help="pseudo-label part INDEX of COUNT of the unlabelled images")
    p.add_argument("--synthetic", default="auto", choices=("auto", "never"),
                   help="auto: synthetic images where the estimate says they help; never: no generator")
    p.add_argument("--policy", default="auto",
                   choices=("auto", "affine", "elastic", "trivialaugment", "randaugment"),
                   help="classical augmentation of the estimate's classifier (auto: the best on the folds)")
    p.add_argument("--folds", type=whole_number(2, 100, "2..100"),
                   help="folds of the labelled images (default 5, or the image count of the rarest class if fewer)")
    p.add_argument("--seeds", type=whole_number(1, 100, "1..100"), default=1, help="classifier seeds per fold")
    p.add_argument("--gan-steps", type=step_count, default=2000, help="steps of each generator augment trains")
    p.add_argument("--gan-processes", type=whole_number(1, 1024, "1..1024"), default=1,
                   help="train each generator under torchrun with this many DDP processes (on a GPU node: one "
                        "per GPU); train.batch_size is per process, as under ganaug train")
    p.add_argument("--jobs", type=whole_number(0, 1024, "0..1024"), default=0,
                   help="classifiers and generators of the estimate trained at a time, one thread each; the "
                        "estimate is the same for any count (0: one per core)")
    p.add_argument("--synthetic-per-class", type=whole_number(1, 10**6, "1..10^6"), default=500,
                   help="synthetic images kept per class (after the filter)")
    p.add_argument("--synthetic-share", type=fraction, default=0.5, help="the synthetic images' share of a batch")
    p.add_argument("--min-confidence", type=fraction, default=0.9,
                   help="the teacher's probability of its class a synthetic image needs")
    p.add_argument("--pseudo-label-confidence", type=fraction, default=0.9,
                   help="the teacher's probability an unlabelled image needs to be kept with its label")
    p.add_argument("--classifier-steps", type=step_count, default=400, help="steps of each classifier (at least)")
    p.add_argument("--teacher-steps", type=step_count, default=1200, help="steps of each FixMatch teacher (at least)")
    p.add_argument("--estimate-unlabelled", type=whole_number(1, 10**6, "1..10^6"), default=2000,
                   help="unlabelled images the FixMatch teachers train on and the estimate pseudo-labels")
    p.add_argument("--config", help="GAN config file (YAML) for the generators augment trains")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="GAN config overrides, e.g. data.resolution=28")
    p.set_defaults(run=_run_augment)


def _run_augment(args) -> int:
    from ganaug.augment import AugmentSettings, run
    from ganaug.augment.settings import gan_config_for
    from ganaug.sampler.layout import parse_shard

    shard = parse_shard(args.shard)
    cfg = gan_config_for(args.labelled, args.model, args.config, args.overrides)
    settings = AugmentSettings(
        labelled=args.labelled, out=args.out, unlabelled=args.unlabelled, model=args.model, synthetic=args.synthetic,
        seed=args.seed, folds=args.folds, seeds=args.seeds, policy=args.policy, gan_config=cfg.to_dict(),
        gan_steps=args.gan_steps, gan_processes=args.gan_processes, synthetic_per_class=args.synthetic_per_class,
        synthetic_share=args.synthetic_share, filter_confidence=args.min_confidence,
        pseudo_label_confidence=args.pseudo_label_confidence, classifier_steps=args.classifier_steps,
        teacher_steps=args.teacher_steps, estimate_unlabelled=args.estimate_unlabelled, work_dir=args.work_dir,
        shard=shard, jobs=args.jobs, progress=not args.no_progress)
    result = run(settings)
    if not result.complete:
        print(f"shard {shard} done; the set is finished by the last shard to end")
        return 0
    for line in result.report["sentences"]:
        print(line)
    print(f"training set: {result.out} (manifest.csv, teacher.onnx, report.md)")
    return 0


# ---------------------------------------------------------------------------------- evaluate


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="quality metrics and the augmentation study",
                       usage="ganaug evaluate {metrics,study} ...", description="Does the synthetic data help? `ganaug evaluate metrics`: quality metrics of a "
                                   "model against real data. `ganaug evaluate study`: the whole augmentation study "
                                   "(train, export, sample, classify on held-out real data). Each has its own --help.")
    which = p.add_subparsers(dest="evaluation", required=True, metavar="COMMAND", parser_class=_Parser)

    m = which.add_parser("metrics", prog="ganaug evaluate metrics", help="FD, KID, precision/recall, per-class FD and memorisation of a model",
                         description="Measure a ganaug ONNX model against real data.")
    m.add_argument("--model", required=True, help="ganaug ONNX model")
    m.add_argument("--data", required=True, help="real data: digits | mnist | fashion_mnist | cifar10 | folder | .npz")
    m.add_argument("--data-root", default="data", help="where torchvision datasets are looked for")
    m.add_argument("--out", required=True, help="output directory (metrics.json, metrics.md, figures)")
    m.add_argument("--n", type=positive_int, default=2000, help="generated images (class-balanced)")
    m.add_argument("--max-real", type=positive_int, default=10000,
                   help="real images compared against (a seeded random subset beyond this)")
    m.add_argument("--features", help="another feature network: a ganaug feature_net_*.pt, a TorchScript file, "
                                      "or ARCH:STATE_DICT for a torchvision classifier (e.g. inception_v3:pt.pth)")
    m.add_argument("--seed", type=seed, default=0, help="latent seed of the generated images")
    m.add_argument("--truncation", type=finite_float, default=0.0, help="truncation of the latents (0: off)")
    m.set_defaults(run=_run_metrics)

    s = which.add_parser("study", prog="ganaug evaluate study", help="the augmentation study: train, export, sample, classify",
                         description="Run the augmentation protocol of docs/evaluation.md; re-running resumes it.")
    s.add_argument("--out", required=True, help="output directory (state.json, report.md, report.json, figures)")
    s.add_argument("--config", help="GAN config file (YAML); data.source names the real data")
    s.add_argument("--data", help="real data (sets data.source)")
    s.add_argument("--k", help="labelled images per class, comma-separated, 'all' for all (default 5,10,20,all)")
    # Options named like StudySettings' fields, without defaults here: one not given keeps the
    # preset's or the dataclass's default (argparse.SUPPRESS leaves it out of the parsed arguments).
    given = {"default": argparse.SUPPRESS}
    s.add_argument("--seeds", type=positive_int, help="classifier seeds per arm (default 3)", **given)
    s.add_argument("--gan-steps", type=step_count, help="GAN training steps per K", **given)
    s.add_argument("--quick", action="store_true", help="the short version: K=5,20, 2 seeds, fewer GAN steps")
    s.add_argument("--test-fraction", type=fraction, help="held-out share of the real data (default 0.3)", **given)
    s.add_argument("--split-seed", type=split_seed, help="seed of the train/test split and K subsets (default 0)",
                   **given)
    s.add_argument("--split-seeds", help="several split seeds, comma-separated: one study each, pooled in one report")
    s.add_argument("--unlabelled", action="store_true",
                   help="the rest of the train split as unlabelled images: self-training, a GAN trained on them, "
                        "and self-training with a teacher that saw the synthetic images", **given)
    s.add_argument("--semi-gan", choices=("unconditional", "pseudo"),
                   help="with --unlabelled, how the second GAN uses those images: all without labels, and with "
                        "pseudo the confident pseudo-labels as labels too (default pseudo)", **given)
    s.add_argument("--filter-confidence", type=fraction,
                   help="keep synthetic images the arm-(b) classifier gives their class with this probability "
                        "(default 0.9; 0: all)", **given)
    s.add_argument("--synthetic-per-class", type=positive_int, help="synthetic images per class (default 2000)",
                   **given)
    s.add_argument("--synthetic-fraction", type=fraction,
                   help="share of each classifier batch drawn from synthetic images in the mixed arms (default 0.5)",
                   **given)
    s.add_argument("--truncation", type=finite_float,
                   help="truncation of the sampler's latents: redraw values beyond this magnitude (default 0: off)",
                   **given)
    s.add_argument("--warp-synthetic", action="store_true",
                   help="classical augmentation warps the synthetic images of the mixed arms too (by default "
                        "it warps the real images alone, the measured better rule)", **given)
    s.add_argument("--classifier-steps", type=step_count,
                   help="classifier training steps, the same for every arm of a K (at least; see the next; "
                        "default 400)", **given)
    s.add_argument("--classifier-min-epochs", type=epoch_count,
                   help="where more steps than --classifier-steps are needed for this many passes over the K "
                        "labelled images, every arm of that K trains that many (default 60; 0: --classifier-steps "
                        "alone)", **given)
    s.add_argument("overrides", nargs="*", metavar="key=value", help="GAN config overrides, e.g. train.loss=bce")
    s.set_defaults(run=_run_study)


def _run_metrics(args) -> int:
    from ganaug.evaluate.api import measure_model

    measure_model(args.model, args.data, Path(args.out), data_root=args.data_root, n=args.n,
                  max_real=args.max_real, features=args.features, seed=args.seed, truncation=args.truncation)
    return 0


def _run_study(args) -> int:
    from ganaug.evaluate.api import run_study, study_settings
    from ganaug.evaluate.study import StudySettings

    options = {name: value for name, value in vars(args).items() if name in StudySettings.option_names()}
    settings = study_settings(args.config, args.overrides, args.data, args.k, args.quick, **options)
    run_study(settings, Path(args.out), split_seeds=seed_list(args.split_seeds) if args.split_seeds else None)
    return 0


# ---------------------------------------------------------------------------------- bench


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measure training and sampling speed on this machine")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="shorter measurements (noisier)")
    p.set_defaults(run=_run_bench)


def _run_bench(args) -> int:
    from ganaug.bench import run_bench

    run_bench(Path(args.out) if args.out else None, quick=args.quick)
    return 0


# ---------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ganaug", description="GAN-based data augmentation.")
    parser.add_argument("--version", action="version", version=f"ganaug {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for add in (_add_train, _add_export, _add_sample, _add_augment, _add_evaluate, _add_bench):
        add(sub)
    return parser


# Optional dependencies and the extra that installs each (a sampling host has none of the first group).
_EXTRAS = {name: "train" for name in ("torch", "torchvision", "tensorboard", "onnx", "onnxscript", "yaml", "sklearn",
                                      "scipy", "torchmetrics", "tqdm", "matplotlib", "PIL", "onnxconverter_common")}
_EXTRAS["onnxruntime"] = "cpu"


def _missing_extra(exc: ModuleNotFoundError) -> str | None:
    top = (exc.name or "").split(".")[0]
    extra = _EXTRAS.get(top)
    if extra is None:
        return None
    if extra == "cpu":
        return "needs an onnxruntime: pip install 'ganaug[cpu]' (or 'ganaug[gpu]' on a GPU host)"
    return f"needs the training extra ({top} is missing): pip install 'ganaug[train,cpu]' (or '[train,gpu]')"


# What to lower when a command runs out of memory.
_MEMORY_ADVICE = {
    "train": "lower train.batch_size (it is per process)",
    "augment": "use fewer --jobs (each worker holds its own copy of the images and, on a GPU, its own CUDA "
               "context) or a smaller --estimate-unlabelled or --synthetic-per-class",
    "sample": "lower --batch-size",
}


def _out_of_memory(command: str, exc: BaseException) -> str | None:
    """Running out of memory as one line that says what to lower; None for any other error. torch's
    GPU error is known by its class name, so that the torch-free commands need not import torch; its
    CPU allocator raises a plain RuntimeError that only its message tells apart."""
    text = str(exc)
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__):
        where = "GPU memory"
    elif isinstance(exc, MemoryError) or "can't allocate memory" in text:
        where = "host memory"
    else:
        return None
    size = re.search(r"[Tt]ried to allocate ([\d.]+ \w+)", text)
    need = f" (it asked for {size.group(1)} more)" if size else ""
    return f"out of {where}{need}: {_MEMORY_ADVICE.get(command, 'lower the batch size, or free memory')}"


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _report(line: str) -> None:
    """The one error line: left for `python -m ganaug.launch` to print once, after torchrun's report,
    or printed here; under a plain torchrun every rank finds the same mistake, and rank 0 says it."""
    if not leave_for_launcher(line) and _is_rank_zero():
        print(line, file=sys.stderr)


def launch_main(argv: list[str] | None = None) -> int:
    """`python -m ganaug.launch`: torchrun's arguments, parsed by torchrun's own parser (a mistake in
    them is one line); the ganaug command it will start is checked once by `preflight` before any
    worker starts; then torchrun runs (ganaug.torchrun)."""
    from torch.distributed.run import get_args_parser

    from ganaug.torchrun import ganaug_arguments, run_torchrun

    parser = get_args_parser()
    parser.prog = "python -m ganaug.launch"

    def usage_error(message: str):  # torchrun's own arguments: one line too, not argparse's usage block
        print(f"ganaug launch: error: {one_line(message)} (see python -m ganaug.launch --help)", file=sys.stderr)
        sys.exit(2)

    parser.error = usage_error
    args = parser.parse_args(argv)
    _check_torchrun_values(args, usage_error)
    command = ganaug_arguments(args)
    if command is not None:
        status = preflight(command)
        if status:
            return status
    return run_torchrun(args)


MAX_PROCESSES_PER_NODE = 1024  # more is a typo, not a node: each process is a Python interpreter


def _check_torchrun_values(args, usage_error) -> None:
    """torchrun checks its values (node counts, restarts, endpoint, processes per node) with asserts
    and ValueErrors deep in its launch, a traceback; its own `config_from_args` runs here first, on a
    copy, so a bad value is one line before anything starts."""
    import copy

    from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint
    from torch.distributed.run import config_from_args

    try:
        config, _, _ = config_from_args(copy.copy(args))
        if args.rdzv_endpoint and not args.standalone:  # the user's; --standalone replaces it
            parse_rendezvous_endpoint(args.rdzv_endpoint, default_port=29400)
    except (AssertionError, ValueError, RuntimeError) as exc:
        usage_error(str(exc) or f"torchrun refused its arguments ({type(exc).__name__})")
    if not 1 <= config.nproc_per_node <= MAX_PROCESSES_PER_NODE:
        usage_error(f"--nproc-per-node {config.nproc_per_node}: 1 to {MAX_PROCESSES_PER_NODE} processes per node")


def preflight(argv: list[str]) -> int:
    """What `python -m ganaug.launch` checks once, before it starts any worker: the arguments and,
    for `train`, the config, the run directory and the data source's name. A mistake found here is
    one line and exit status 2 (instead of one failed worker per process); 0 when none was found."""
    args = build_parser().parse_args(argv)
    check = getattr(args, "preflight", None)
    if check is None:
        return 0
    try:
        check(args)
    except UserError as exc:
        print(f"ganaug {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    return 0


def idle_threads_sleep() -> None:
    """OpenMP's idle threads sleep instead of spinning, unless the user chose otherwise. It must be set
    before torch loads its OpenMP runtime, so here, before any command imports torch. On a CPU shared
    with other work, spinning threads steal the cores their siblings wait for: 40 training steps at the
    default 2 threads took 37 s, at 1 thread 28 s, at 2 sleeping threads 24.5 s (docs/performance.md)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    idle_threads_sleep()
    args = build_parser().parse_args(argv)
    from ganaug.logs import setup_logging

    setup_logging()
    name = args.command
    try:
        return args.run(args) or 0
    except UserError as exc:
        _report(f"ganaug {name}: error: {one_line(exc)}")
        return 2
    except ModuleNotFoundError as exc:
        advice = _missing_extra(exc)
        if advice is None:
            raise
        _report(f"ganaug {name}: error: this command {advice}")
        return 2
    except (MemoryError, RuntimeError) as exc:  # torch's out-of-memory errors are RuntimeErrors
        advice = _out_of_memory(name, exc)
        if advice is None:
            raise
        line = f"ganaug {name}: error: {advice}"
        if not leave_for_launcher(line):
            print(line, file=sys.stderr)  # any rank: one may run out alone
        return 2
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", None) or signal.SIGINT
        how = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        print(f"ganaug {name}: {how}", file=sys.stderr)
        return 128 + signum
