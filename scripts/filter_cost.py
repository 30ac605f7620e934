#!/usr/bin/env python3
"""What `ganaug sample --filter` costs: images/s filtered against unfiltered, measured side by side.

    python scripts/filter_cost.py [--n 20000] [--rounds 5] [--threads 0]

Builds the study's shapes (a 16x16 grey conditional generator of the study's size, briefly trained,
and the study's SmallCNN exported with export_classifier_onnx), then writes the same set of --n
images with and without the filter, alternating round by round (the machine may be shared and
noisy), in PNG and in .npz. The filter keeps every image (TAU near 0), so the ratio is its whole
cost per image with none of the saving of not writing rejected ones. Prints medians;
docs/sampler.md quotes a run.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))

    from ganaug import train
    from ganaug.evaluate.classifier import SmallCNN, export_classifier_onnx
    from ganaug.evaluate.study import STUDY_GAN_DEFAULTS
    from ganaug.export import export_model
    from ganaug.sampler import ImageFilter, Sampler, SampleRequest, write_samples
    from ganaug.train import with_overrides

    work = Path(tempfile.mkdtemp(prefix="filter-cost-"))
    try:
        from ganaug.config import load_config

        cfg = load_config(None, ["train.steps=2", "ckpt.every=2", "log.progress=false", "log.image_every=0"],
                          base=STUDY_GAN_DEFAULTS)
        train.run(with_overrides(cfg, train={"batch_size": 16}), work / "run")
        export_model(work / "run", work / "generator.onnx")
        sampler = Sampler.load(work / "generator.onnx", threads=args.threads)
        shape, classes = sampler.meta.image_shape, tuple(range(sampler.meta.num_classes))
        export_classifier_onnx(SmallCNN(shape[2], len(classes)).eval(), work / "classifier.onnx", shape,
                               list(sampler.meta.class_names))
        # TAU so low that every image is kept: the filter's whole cost (scoring, records, the score column)
        # and none of its saving (a rejected image is neither encoded nor written).
        image_filter = ImageFilter.load(work / "classifier.onnx", sampler.meta, 1e-6, threads=args.threads)

        def run(fmt: str, filtered: bool) -> float:
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            request = SampleRequest(str(out), n=args.n, classes=classes, format=fmt, progress=False)
            start = time.perf_counter()
            write_samples(sampler, request, filter=image_filter if filtered else None)
            return args.n / (time.perf_counter() - start)

        for fmt in ("png", "npz"):
            run(fmt, False), run(fmt, True)  # warm-up
            rates = {False: [], True: []}
            for _ in range(args.rounds):
                for filtered in (False, True):
                    rates[filtered].append(run(fmt, filtered))
            plain, kept = statistics.median(rates[False]), statistics.median(rates[True])
            print(f"{fmt}: unfiltered {plain:,.0f} images/s, filtered {kept:,.0f} images/s "
                  f"(filtered / unfiltered {kept / plain:.2f}; rounds {[round(r) for r in rates[False]]} vs "
                  f"{[round(r) for r in rates[True]]})")
        scores_s = []
        images, labels = sampler.generate(1024, seed=0)
        for _ in range(args.rounds):
            start = time.perf_counter()
            image_filter.scores(images, labels)
            scores_s.append(1024 / (time.perf_counter() - start))
        print(f"classifier alone: {statistics.median(scores_s):,.0f} images/s (batches of 1024)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
