"""`ganaug sample`: command-line arguments -> a checked request -> write_samples -> summary line."""

from __future__ import annotations

import logging
import os

from ganaug.errors import UserError
from ganaug.sampler.job import SampleRequest, write_samples
from ganaug.sampler.labels import parse_class_list, select_classes
from ganaug.sampler.rng import MIN_TRUNCATION
from ganaug.sampler.sampler import Sampler

log = logging.getLogger(__name__)


def _check_arguments(args) -> None:
    """Mistakes visible in the arguments alone, reported before the model is even read."""
    if args.n is None and args.per_class is None:
        raise UserError("say how many images: --n N (in total) or --per-class K")
    if args.n is not None and args.per_class is not None:
        raise UserError("--n and --per-class exclude each other; give one of them")
    for flag, value in (
        ("--n", args.n),
        ("--per-class", args.per_class),
        ("--batch-size", args.batch_size),
        ("--shard-size", args.shard_size),
    ):
        if value is not None and value <= 0:
            raise UserError(f"{flag} must be positive, got {value}")
    if args.threads < 0:
        raise UserError(f"--threads must be 0 (one per physical core) or positive, got {args.threads}")
    if args.truncation < 0 or 0 < args.truncation < MIN_TRUNCATION:
        raise UserError(f"--truncation must be 0 (off) or at least {MIN_TRUNCATION}, got {args.truncation}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out} exists and is not a directory")


def main(args) -> int:
    _check_arguments(args)
    sampler = Sampler.load(args.model, provider=args.provider, threads=args.threads)
    classes = select_classes(sampler.meta, parse_class_list(args.classes))
    n = args.n if args.n is not None else args.per_class * len(classes)
    arguments = {
        "n": args.n,
        "per_class": args.per_class,
        "classes": args.classes,
        "seed": args.seed,
        "format": args.format,
        "truncation": args.truncation,
    }
    if args.format == "npz":
        arguments["shard_size"] = args.shard_size
    request = SampleRequest(
        out_dir=args.out,
        n=n,
        classes=classes,
        seed=args.seed,
        format=args.format,
        truncation=args.truncation,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        arguments=arguments,
    )
    result = write_samples(sampler, request)
    log.info("%s", result.summary())
    return 0
