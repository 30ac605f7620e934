"""`ganaug sample`: command-line arguments -> a checked request -> write_samples -> summary line."""

from __future__ import annotations

import logging
import math
import os

from ganaug.errors import UserError
from ganaug.sampler.filter import ImageFilter, check_min_confidence
from ganaug.sampler.job import SampleRequest, write_samples
from ganaug.sampler.labels import parse_class_list, select_classes
from ganaug.sampler.rng import MIN_TRUNCATION
from ganaug.sampler.sampler import Sampler
from ganaug.sampler.shards import parse_shard
from ganaug.sampler.space import human

log = logging.getLogger(__name__)


def _check_arguments(args) -> None:
    """Mistakes visible in the arguments alone, reported before the model is even read."""
    if args.n is None and args.per_class is None:
        raise UserError("say how many images: --n N (in total) or --per-class K")
    if args.n is not None and args.per_class is not None:
        raise UserError("--n and --per-class exclude each other; give one of them")
    # Counts, sizes and thread numbers arrive checked by the command line's argument types.
    if args.truncation < 0 or 0 < args.truncation < MIN_TRUNCATION:
        raise UserError(f"--truncation must be 0 (off) or at least {MIN_TRUNCATION}, got {args.truncation}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out} exists and is not a directory")
    parse_shard(args.shard)
    if args.filter is None and args.min_confidence is not None:
        raise UserError("--min-confidence needs --filter CLASSIFIER.onnx (the classifier whose confidence it is)")
    if args.filter is not None and args.min_confidence is None:
        raise UserError("--filter needs --min-confidence TAU: the probability of its class an image needs to be "
                        "kept (e.g. 0.9)")
    if args.min_confidence is not None:
        check_min_confidence(args.min_confidence)


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): no check
        return None


def _check_fits_in_memory(images: int, image_shape: tuple[int, ...], flag: str, value: int) -> None:
    """Refuse a run whose images in flight cannot fit in half of this machine's memory."""
    image_bytes, memory = math.prod(image_shape), _physical_memory()
    if memory is None:
        return
    budget = memory // 2
    if images * image_bytes > budget:
        per_unit = max(1, images // value) * image_bytes
        raise UserError(f"{flag} {value}: {images} images of {human(image_bytes)} in flight "
                        f"({human(images * image_bytes)}) do not fit in half of this machine's "
                        f"{human(2 * budget)}; use {flag} {max(1, budget // per_unit)} or less")


def _check_memory(args, n: int, image_shape: tuple[int, ...]) -> None:
    if args.format == "npz":
        # Two files in memory at once (one generated, one written).
        shard_images = min(args.shard_size, n)
        _check_fits_in_memory(2 * shard_images, image_shape, "--shard-size", shard_images)
    # One batch generated while up to two more wait for the writers (part.write_png_part).
    batch = min(args.batch_size, n)
    _check_fits_in_memory(3 * batch, image_shape, "--batch-size", batch)


def main(args) -> int:
    _check_arguments(args)
    sampler = Sampler.load(args.model, provider=args.provider, threads=args.threads)
    image_filter = None
    if args.filter is not None:
        image_filter = ImageFilter.load(args.filter, sampler.meta, args.min_confidence, provider=args.provider,
                                        threads=args.threads)
    classes = select_classes(sampler.meta, parse_class_list(args.classes))
    n = args.n if args.n is not None else args.per_class * len(classes)
    _check_memory(args, n, sampler.meta.image_shape)
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
    if image_filter is not None:  # absent without a filter: unfiltered sets keep their sample_info.json
        arguments |= {"filter": args.filter, "min_confidence": args.min_confidence}
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
        shard=parse_shard(args.shard),
    )
    result = write_samples(sampler, request, filter=image_filter)
    log.info("%s", result.summary())
    return 0
