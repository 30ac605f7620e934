"""`ganaug sample`: command-line arguments -> a checked request -> write_samples -> one summary line."""

from __future__ import annotations

import logging
import math
import os

from ganaug.errors import UserError
from ganaug.memory import check_fits
from ganaug.sampler.filter import ImageFilter, check_min_confidence
from ganaug.sampler.layout import parse_shard
from ganaug.sampler.sampler import Sampler, check_truncation, select_classes
from ganaug.sampler.write import SampleRequest, write_samples

log = logging.getLogger(__name__)
MAX_IMAGES = 2**63 - 1  # image indices are int64 in the sampler and its files


def _check_fits_in_memory(images: int, image_shape: tuple[int, ...], flag: str, value: int) -> None:
    """Refuse a run whose images in flight (`images`, for `flag` `value`) cannot fit in memory."""
    per_value = max(1, images // value)
    check_fits(images, math.prod(image_shape), f"{flag} {value}: {images} images in flight",
               lambda fit: f"use {flag} {max(1, fit // per_value)} or less")


def main(args) -> int:
    # Mistakes the arguments show alone come before the model is read; counts, sizes and thread numbers
    # arrive checked by the command line's argument types.
    if (args.n is None) == (args.per_class is None):
        raise UserError("say how many images: --n N (in total) or --per-class K" if args.n is None else
                        "--n and --per-class exclude each other; give one of them")
    check_truncation(args.truncation)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out} exists and is not a directory")
    shard = parse_shard(args.shard)
    if (args.filter is None) != (args.min_confidence is None):
        raise UserError("--min-confidence needs --filter CLASSIFIER.onnx (the classifier whose confidence it is)"
                        if args.filter is None else "--filter needs --min-confidence TAU: the probability of its "
                        "class an image needs to be kept (e.g. 0.9)")
    if args.min_confidence is not None:
        check_min_confidence(args.min_confidence)
    sampler = Sampler.load(args.model, provider=args.provider, threads=args.threads)
    image_filter = None if args.filter is None else ImageFilter.load(
        args.filter, sampler.meta, args.min_confidence, provider=args.provider, threads=args.threads)
    # Names are matched as typed: "a " is not "a" (a folder can be named either, so stripping could pick
    # another class than the one meant; an unknown name is refused with the model's classes listed).
    names = None if args.classes is None else [name for name in args.classes.split(",") if name]
    classes = select_classes(sampler.meta, names)
    n = args.n if args.n is not None else args.per_class * len(classes)
    if n > MAX_IMAGES:
        raise UserError(f"--per-class {args.per_class} x {len(classes)} classes is {n} images; image indices are "
                        f"int64, so at most {MAX_IMAGES // len(classes)} per class")
    if args.format == "npz":  # one file generated while the one before is written
        _check_fits_in_memory(2 * min(args.shard_size, n), sampler.meta.image_shape, "--shard-size",
                              min(args.shard_size, n))
    # one batch generated while up to two more wait for the writers
    _check_fits_in_memory(3 * min(args.batch_size, n), sampler.meta.image_shape, "--batch-size", min(args.batch_size, n))
    arguments = {"n": args.n, "per_class": args.per_class, "classes": args.classes, "seed": args.seed,
                 "format": args.format, "truncation": args.truncation}
    if args.format == "npz":
        arguments["shard_size"] = args.shard_size
    if image_filter is not None:  # absent without a filter: unfiltered sets keep their sample_info.json
        arguments |= {"filter": args.filter, "min_confidence": args.min_confidence}
    request = SampleRequest(out_dir=args.out, n=n, classes=classes, seed=args.seed, format=args.format,
                            truncation=args.truncation, batch_size=args.batch_size, shard_size=args.shard_size,
                            overwrite=args.overwrite, progress=not args.no_progress, arguments=arguments, shard=shard)
    log.info("%s", write_samples(sampler, request, filter=image_filter).summary())
    return 0
