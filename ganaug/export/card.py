"""The model card of an export bundle: what each file is, how good, how fast, and which to ship where.

    python -m ganaug.export.card --out OUT/model_card.json --source RUN --command "..." \\
        [--samples-dir OUT/samples] OUT/generator_fp32.onnx OUT/generator_fp16.onnx OUT/generator_int8.onnx

For each model it records the ganaug metadata, the parity figures the exporter measured, the
file's size and sha256, its onnxruntime CPU speed measured side by side with the others, and,
when `--samples-dir DIR/<model stem>/` holds what `ganaug sample --format npz` wrote, how far the
sampled images of each variant are from those of fp32 (same seed, so the same latents). Torch-free:
it reads models with onnxruntime only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ganaug import __version__, contract
from ganaug.errors import UserError
from ganaug.files import sha256_of, write_atomic
from ganaug.sampler.runtime import cpu_session

log = logging.getLogger(__name__)

CARD_SCHEMA = "1"
SPEED_BATCH = 64
SPEED_REPEATS = 5
INT8_WORTH_IT = 1.2  # int8 must be at least this much faster than fp32 on the CPU to be recommended
SHARED_KEYS = ("z_dim", "num_classes", "class_names", "image_shape", "train_step", "checkpoint_sha256",
               "arch", "model_spec", "weights", "version", "exporter")
JSON_KEYS = ("class_names", "image_shape", "model_spec", "parity")
INT_KEYS = ("z_dim", "num_classes", "train_step")


def read_metadata(path: Path) -> dict:
    """The ganaug.* metadata of a model, JSON values decoded, without the 'ganaug.' prefix."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    raw = session.get_modelmeta().custom_metadata_map
    if contract.PRECISION_KEY not in raw:
        raise UserError(f"{path} has no ganaug metadata; is it a model written by `ganaug export`?")
    metadata = {key.removeprefix(contract.PROVENANCE_PREFIX): value for key, value in raw.items()
                if key.startswith(contract.PROVENANCE_PREFIX)}
    for key in JSON_KEYS:
        if key in metadata:
            metadata[key] = json.loads(metadata[key])
    for key in INT_KEYS:
        if key in metadata:
            metadata[key] = int(metadata[key])
    return metadata


def _speed_feeds(session: ort.InferenceSession, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for arg in session.get_inputs():
        if arg.name == "z":
            feeds["z"] = rng.standard_normal((batch, arg.shape[1]), dtype=np.float32)
        else:  # labels
            feeds[arg.name] = np.zeros(batch, dtype=np.int64)
    return feeds


def measure_speed(paths: list[Path], batch: int = SPEED_BATCH, repeats: int = SPEED_REPEATS) -> dict[Path, float]:
    """Images per second of each model on onnxruntime's CPU provider, timed in turns (best of repeats)."""
    sessions = {path: cpu_session(path.read_bytes()) for path in paths}
    feeds = {path: _speed_feeds(session, batch) for path, session in sessions.items()}
    best = {}
    for path, session in sessions.items():  # warm-up: first runs allocate and pick kernels
        session.run(None, feeds[path])
        best[path] = float("inf")
    for _ in range(repeats):  # interleaved, so a busy moment of the machine hits every model alike
        for path, session in sessions.items():
            started = time.perf_counter()
            session.run(None, feeds[path])
            best[path] = min(best[path], time.perf_counter() - started)
    return {path: batch / seconds for path, seconds in best.items()}


def read_samples(folder: Path) -> np.ndarray | None:
    """Images [N, C, H, W] (grey levels) that `ganaug sample --format npz` wrote, in image-index order."""
    shards = sorted(folder.glob("shard_*.npz"))
    if not shards:
        return None
    images = []
    for shard in shards:
        with np.load(shard) as data:
            images.append(data["images"])
    return np.concatenate(images).transpose(0, 3, 1, 2).astype(np.float64)


def _sample_agreement(samples: dict[str, np.ndarray]) -> dict[str, dict]:
    """Each variant's sampled images against fp32's (same seed, so the same latents and labels)."""
    reference = samples.get("fp32")
    agreement = {}
    for precision, images in samples.items():
        entry = {"images": len(images)}
        if reference is not None and images.shape == reference.shape:
            # A few images: pixel errors only (the exporter's Fréchet distance used hundreds).
            error = np.abs(images - reference)
            entry["vs_fp32"] = {"max_error": float(error.max()), "mean_error": float(error.mean()),
                                "identical_pixels": float((error == 0).mean())}
        agreement[precision] = entry
    return agreement


def _recommendations(variants: dict[str, dict], notes: list[str]) -> dict[str, str]:
    cpu = "fp32"
    int8, fp32 = variants.get("int8"), variants.get("fp32")
    if int8 and fp32:
        ratio = int8["speed"]["images_per_second"] / fp32["speed"]["images_per_second"]
        within = int8["parity"].get("int8", {}).get("within_thresholds", False)
        if ratio >= INT8_WORTH_IT and within:
            cpu = "int8"
        else:
            notes.append(f"int8 cannot help here: it ran {ratio:.2f}x the fp32 model's speed on this CPU"
                         + ("" if within else " and exceeds its error thresholds") + "; ship fp32 to CPUs")
    return {
        "cpu": cpu,
        "cuda": "fp16" if "fp16" in variants else "fp32",
        "tensorrt": "fp16 (or fp32 with TensorRT's own fp16 mode)" if "fp16" in variants else "fp32",
    }


def build_card(models: list[Path], command: str, source: str | None = None,
               samples_dir: Path | None = None, speed_batch: int = SPEED_BATCH) -> dict:
    variants: dict[str, dict] = {}
    shared: dict = {}
    samples: dict[str, np.ndarray] = {}
    notes: list[str] = []
    metadata_of = {path: read_metadata(path) for path in models}
    speeds = measure_speed(models, speed_batch)
    fp32_speed = next((speeds[path] for path in models if metadata_of[path]["precision"] == "fp32"), None)
    for path in models:
        metadata = metadata_of[path]
        precision = metadata["precision"]
        if precision in variants:
            raise UserError(f"two {precision} models given ({variants[precision]['file']} and {path.name})")
        this_shared = {key: metadata.get(key) for key in SHARED_KEYS}
        if shared and this_shared["checkpoint_sha256"] != shared["checkpoint_sha256"]:
            raise UserError(f"{path} was exported from another checkpoint than {models[0]}")
        shared = shared or this_shared
        variant = {
            "file": path.name,
            "size_bytes": path.stat().st_size,
            "sha256": sha256_of(path),
            "precision": precision,
            "parity": metadata.get("parity", {}),
            "speed": {"provider": "CPUExecutionProvider", "batch": speed_batch, "cpu_count": os.cpu_count(),
                      "images_per_second": round(speeds[path], 1),
                      "vs_fp32": round(speeds[path] / fp32_speed, 2) if fp32_speed else None},
        }
        if source is not None:
            variant["command"] = shlex.join(["ganaug", "export", source, "--out", path.name, "--precision", precision])
        if "int8_note" in metadata:
            notes.append(metadata["int8_note"])
        if samples_dir is not None:
            images = read_samples(samples_dir / path.stem)
            if images is None:
                raise UserError(f"no sampled images in {samples_dir / path.stem} (expected shard_*.npz)")
            samples[precision] = images
        variants[precision] = variant
    for precision, entry in _sample_agreement(samples).items():
        variants[precision]["sample_check"] = entry
    return {
        "card_schema": CARD_SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "ganaug_version": __version__,
        "model": shared,
        "variants": variants,
        "recommended": _recommendations(variants, notes),
        "notes": notes,
        "units": "errors in grey levels (0..255); fd in grey levels^2 (docs/export.md)",
    }


def write_card(card: dict, out: Path) -> None:
    write_atomic(out, json.dumps(card, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ganaug.export.card", description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="ganaug ONNX models of one checkpoint")
    parser.add_argument("--out", required=True, type=Path, help="the model_card.json to write")
    parser.add_argument("--command", required=True, help="the command that made the bundle")
    parser.add_argument("--source", help="the run directory or checkpoint the models were exported from")
    parser.add_argument("--samples-dir", type=Path, help="DIR/<model stem>/ holds `ganaug sample --format npz` output")
    parser.add_argument("--speed-batch", type=int, default=SPEED_BATCH)
    args = parser.parse_args(argv)
    from ganaug.logs import setup_logging

    setup_logging()
    try:
        for path in args.models:
            if not path.is_file():
                raise UserError(f"model {path} does not exist")
        card = build_card(args.models, args.command, args.source, args.samples_dir, args.speed_batch)
        write_card(card, args.out)
    except UserError as exc:
        print(f"ganaug.export.card: error: {exc}", file=sys.stderr)
        return 2
    log.info("wrote %s: recommended %s", args.out, ", ".join(f"{k}: {v}" for k, v in card["recommended"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
