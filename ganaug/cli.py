"""The `ganaug` command line.

Each subcommand's arguments are declared here, and its implementation is imported only when it
runs, so `ganaug --help` and `ganaug sample` never import torch. A `UserError` anywhere ends in one
line on stderr and exit status 2; Ctrl-C in 130.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from ganaug import __version__
from ganaug.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (`ganaug sample: error: ...`), like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a GAN (one process, or many under torchrun)",
                       description="Train a class-conditional GAN. Run under `torchrun -m ganaug train` "
                                   "for DDP; a run directory with checkpoints/last.pt is resumed.")
    p.add_argument("--run-dir", help="run directory (config.yaml, checkpoints/, tb/, samples/)")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. train.steps=500")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--help-config", action="store_true", help="list every config key with type, default and doc")
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    if args.help_config:
        from ganaug.config import help_config

        print(help_config())
        return 0
    from ganaug.train.entry import main as train_main

    return train_main(args)


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
    from ganaug.export.entry import main as export_main

    return export_main(args)


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="write labelled synthetic images with onnxruntime (no torch)",
                       description="Generate images from a ganaug ONNX model into an ImageFolder tree or .npz "
                                   "shards. Image i depends only on (model, seed, i); re-running completes "
                                   "an interrupted run.")
    p.add_argument("model", help="ganaug ONNX model")
    p.add_argument("--n", type=positive_int, help="number of images (class-balanced when conditional)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", default="png", choices=("png", "npz"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", help="comma-separated class names to generate (default: all)")
    p.add_argument("--per-class", type=positive_int, help="images per class (instead of --n)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--provider", default="auto", choices=("auto", "cpu", "cuda", "tensorrt"))
    p.add_argument("--threads", type=int, default=0, help="inference threads (0: physical cores)")
    p.add_argument("--shard-size", type=positive_int, default=10000, help="images per .npz shard")
    p.add_argument("--shard", metavar="INDEX/COUNT",
                   help="write part INDEX of COUNT of the set (processes 0 .. COUNT-1 into one --out; see docs)")
    p.add_argument("--truncation", type=finite_float, default=0.0,
                   help="truncation trick: redraw latent values beyond this magnitude (0 disables)")
    p.add_argument("--overwrite", action="store_true", help="replace output made with another model or seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_sample)


def _run_sample(args) -> int:
    from ganaug.sampler.entry import main as sample_main

    return sample_main(args)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="quality metrics and the augmentation study",
                       usage="ganaug evaluate {metrics,study} ...",
                       description="Does the synthetic data help? `ganaug evaluate metrics`: quality metrics of a "
                                   "model against real data. `ganaug evaluate study`: the whole augmentation study "
                                   "(train, export, sample, classify on held-out real data). Each has its own --help.")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="{metrics,study} ...",
                   help="the evaluation to run and its options")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args) -> int:
    from ganaug.evaluate.entry import main as evaluate_main

    return evaluate_main(args.args)


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measure training and sampling speed on this machine")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="shorter measurements (noisier)")
    p.set_defaults(run=_run_bench)


def _run_bench(args) -> int:
    from ganaug.bench import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ganaug", description="GAN-based data augmentation.")
    parser.add_argument("--version", action="version", version=f"ganaug {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for add in (_add_train, _add_export, _add_sample, _add_evaluate, _add_bench):
        add(sub)
    return parser


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ganaug.logs import setup_logging

    setup_logging()
    try:
        return args.run(args) or 0
    except UserError as exc:
        # Under torchrun every rank finds the same mistake; one line is enough.
        if _is_rank_zero():
            print(f"ganaug {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ganaug {args.command}: interrupted", file=sys.stderr)
        return 130
