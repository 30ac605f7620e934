"""`ganaug bench`: measured speed on the machine it runs on, as ratios taken side by side in one run.

The machine may be shared and noisy, so every comparison alternates its contenders round by round
in one process (or one batch of torchrun runs) and reports medians; absolute rates are context.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from ganaug.files import check_regular_target, ensure_writable_dir, write_atomic

log = logging.getLogger(__name__)

TARGETS = {  # key: (target, higher is better)
    "train_speedup_vs_reference": (2.0, True),
    "ddp_scaling_efficiency": (0.9, True),
    "sampler_ort_vs_torch": (3.0, True),
    "sampler_ort_vs_torch_best": (1.5, True),
    "sampler_end_to_end_fraction": (0.8, True),
    "sampler_cold_start_s": (1.0, False),
    "sampler_rss_growth": (1.1, False),
}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "onnxruntime": __import__("onnxruntime").__version__, "python": platform.python_version(),
            "load_average_at_start": os.getloadavg()}


def _train_run(folder: Path) -> Path:
    """A briefly trained default generator (32x32, conditional digits): weights for the sampling figures."""
    from ganaug import train
    from ganaug.config import load_config

    run = folder / "run"
    train.run(load_config(None, ["train.steps=20", "ckpt.every=20", "log.progress=false", "log.image_every=0"]), run)
    return run


def format_table(results: dict) -> str:
    lines = [f"{'measure':<34} {'value':>10}  target"]
    if "train_precision" in results:
        lines.append(f"{'training precision (auto)':<34} {results['train_precision']:>10}")
    for key in ("train_speedup_vs_reference", "bf16_speedup_vs_fp32", "ddp_scaling_efficiency",
                "sampler_ort_vs_torch", "sampler_ort_vs_torch_best", "sampler_end_to_end_fraction",
                "sampler_end_to_end_fraction_npz", "sampler_cold_start_s", "sampler_rss_growth"):
        if key not in results:
            continue
        target = TARGETS.get(key)
        verdict = ""
        if target:
            ok = results[key] >= target[0] if target[1] else results[key] <= target[0]
            verdict = f"{'>=' if target[1] else '<='} {target[0]}  {'met' if ok else 'MISSED'}"
        lines.append(f"{key:<34} {results[key]:>10.3f}  {verdict}")
    for name, value in results.get("sampler_ort_vs_torch_by_variant", {}).items():
        lines.append(f"{'  ort ' + name + ' vs torch eager fp32':<34} {value:>10.3f}")
    for name, value in results.get("generator_gflops_fraction", {}).items():
        lines.append(f"{'  ' + name:<34} {value:>10.3f}")
    return "\n".join(lines)


def _can_compile() -> bool:
    """The torch.compile contender needs a C++ compiler on the CPU; without one it is left out."""
    from ganaug.train.checks import compile_problem

    problem = compile_problem(torch.device("cpu"))
    if problem is not None:
        log.warning("bench: torch.compile left out of the sampling table: %s", problem)
    return problem is None


def run_bench(out: Path | None = None, quick: bool = False) -> dict:
    """Measure, print the table, and write it as JSON to `out` (checked before the minutes of work)."""
    from ganaug.bench.ddp_speed import bench_ddp
    from ganaug.bench.peak import bench_peaks
    from ganaug.bench.sample_speed import bench_sampling
    from ganaug.bench.train_speed import bench_training
    from ganaug.train.precision import resolve_precision

    if out is not None:
        check_regular_target(out, "--out")
        ensure_writable_dir(out.parent, "--out's folder")
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    results: dict = {"machine": machine(), "quick": quick}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ganaug-bench-") as folder:
        work = Path(folder)
        precision = resolve_precision("auto", torch.device("cpu"))
        log.info("bench: matmul peaks")
        results |= bench_peaks(bf16=precision == "bf16")
        log.info("bench: training at %s (what train.precision=auto picks here) against the reference loop", precision)
        results |= bench_training(work / "train", steps=3 if quick else 8, rounds=3 if quick else 5,
                                  precision=precision)
        log.info("bench: DDP scaling (torchrun, gloo)")
        # 30 timed steps of 64 images per rank: about 30 s a launch at fp32 on a 2-core AVX2 CPU, where
        # 60 made the full run 10.7 minutes on a quiet machine (docs/performance.md)
        results |= bench_ddp(steps=20 if quick else 30, rounds=1 if quick else 2)
        log.info("bench: sampling")
        run = _train_run(work)
        results |= bench_sampling(run, work, n=1024 if quick else 4096, rounds=3 if quick else 5,
                                  peaks=results, try_compile=not quick and _can_compile(), bf16=precision == "bf16")
    results["seconds"] = time.perf_counter() - start
    print(format_table(results))
    if out is not None:
        write_atomic(out, json.dumps(results, indent=2) + "\n")
        print(f"wrote {out}")
    return results
