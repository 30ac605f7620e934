"""Generation speed: onnxruntime variants against PyTorch on the same weights and batch, writing
costs, cold start, memory growth, and how close generation gets to the machine's matmul peak."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

BATCH = 256
VARIANTS = ("fp32", "fp16", "int8")


def export_variants(run_dir: Path, out_dir: Path) -> dict[str, Path]:
    from ganaug.export import export_model

    paths = {}
    for precision in VARIANTS:
        path = out_dir / f"generator_{precision}.onnx"
        # A speed benchmark on briefly trained weights: quality thresholds are not its business.
        export_model(run_dir, path, precision=precision, force=True, allow_degraded=True)
        paths[precision] = path
    return paths


def load_torch_generator(run_dir: Path):
    from ganaug.export.source import load_generator

    loaded = load_generator(run_dir)
    return loaded.generator.requires_grad_(False), loaded.spec


def torch_generate_fn(generator, spec, mode: str):
    """A function n -> uint8 NHWC images, like the ONNX graph's output, in one of PyTorch's modes."""
    channels_last = mode != "eager_fp32"
    model = generator.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if mode.startswith("compile_"):
        model = torch.compile(model)
    use_bf16 = mode in ("bf16_channels_last", "compile_bf16")

    @torch.inference_mode()
    def generate(n: int) -> torch.Tensor:
        z = torch.randn(n, spec.z_dim)
        labels = torch.arange(n) % spec.num_classes if spec.num_classes else None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            images = model(z, labels)
        return images.float().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    return generate


def images_per_second(generate, n: int, rounds: int) -> list[float]:
    generate(BATCH)  # warm-up: primitives, caches, first allocations
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n // BATCH):
            generate(BATCH)
        rates.append(n / (time.perf_counter() - start))
    return rates


def compare(contenders: dict, n: int, rounds: int) -> dict[str, float]:
    """Median images/s of each contender, measured in alternating rounds."""
    rates = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, generate in contenders.items():
            rates[name] += images_per_second(generate, n, 1)
    return {name: statistics.median(values) for name, values in rates.items()}


def generator_flops_per_image(generator, spec) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    z = torch.randn(1, spec.z_dim)
    labels = torch.zeros(1, dtype=torch.long) if spec.num_classes else None
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        generator(z, labels)
    return float(counter.get_total_flops())


def time_to_first_image(model: Path, out_dir: Path) -> float:
    """Seconds from process start to the first PNG in place, for `ganaug sample` (which never imports torch)."""
    command = [sys.executable, "-m", "ganaug", "sample", str(model), "--n", "1", "--out", str(out_dir),
               "--no-progress"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = None
    while first is None:
        if any(out_dir.glob("*/*.png")):
            first = time.perf_counter() - start
        elif process.poll() is not None:
            raise RuntimeError("ganaug sample exited before writing an image")
        time.sleep(0.002)
    process.wait(timeout=60)
    return first


_REPORT_PEAK_RSS = """
import runpy, sys
sys.argv = ["ganaug", *sys.argv[1:]]
try:
    runpy.run_module("ganaug", run_name="__main__")
except SystemExit as exit:
    code = exit.code
# VmHWM belongs to this process image alone; ru_maxrss would include the forking parent's pages.
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(int(peak.split()[1]) // 1024, file=sys.stderr)
sys.exit(code)
"""


def peak_rss_mb(model: Path, out_dir: Path, n: int) -> float:
    """Peak resident memory of one `ganaug sample` process writing n PNGs."""
    command = [sys.executable, "-c", _REPORT_PEAK_RSS, "sample", str(model), "--n", str(n), "--out", str(out_dir),
               "--no-progress"]
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"ganaug sample --n {n} failed ({result.returncode}): {result.stderr[-500:]}")
    return float(result.stderr.strip().splitlines()[-1])


def end_to_end_fractions(sampler, work: Path, n: int, num_classes: int, rounds: int) -> dict[str, float]:
    """`write_samples` images/s (PNG tree, .npz shards) over generation alone, alternated round by round."""
    from ganaug.sampler import SampleRequest, write_samples

    rates: dict[str, list[float]] = {"png": [], "npz": [], "generation": []}
    for round_ in range(rounds):
        for fmt in ("png", "npz"):
            request = SampleRequest(str(work / f"e2e_{fmt}_{round_}"), n, tuple(range(num_classes)), format=fmt,
                                    batch_size=BATCH, progress=False)
            rates[fmt].append(write_samples(sampler, request).images_per_second)
        rates["generation"] += images_per_second(lambda k: sampler.generate(k, seed=0), n, 1)
    generation = statistics.median(rates["generation"])
    return {fmt: statistics.median(rates[fmt]) / generation for fmt in ("png", "npz")}


def bench_sampling(run_dir: Path, work: Path, n: int, rounds: int, peaks: dict, try_compile: bool,
                   bf16: bool) -> dict:
    """onnxruntime's variants against torch's modes; torch's bf16 modes only where bf16 is native."""
    from ganaug.sampler import Sampler

    paths = export_variants(run_dir, work)
    generator, spec = load_torch_generator(run_dir)
    flops = generator_flops_per_image(generator, spec)
    samplers = {p: Sampler.load(paths[p], provider="cpu") for p in VARIANTS}
    torch_modes = ["eager_fp32", "channels_last_fp32"] + (["bf16_channels_last"] if bf16 else [])
    torch_modes += [("compile_bf16" if bf16 else "compile_fp32")] if try_compile else []
    contenders = {f"torch_{mode}": torch_generate_fn(load_torch_generator(run_dir)[0], spec, mode) for mode in torch_modes}
    contenders |= {f"ort_{p}": (lambda s: lambda k: s.generate(k, seed=0))(samplers[p]) for p in VARIANTS}
    speeds = compare(contenders, n, rounds)

    best_ort = max(VARIANTS, key=lambda p: speeds[f"ort_{p}"])
    best_torch = max((m for m in torch_modes), key=lambda m: speeds[f"torch_{m}"])
    eager = speeds["torch_eager_fp32"]

    end_to_end = end_to_end_fractions(samplers[best_ort], work, n, max(spec.num_classes, 1), rounds)

    small, large = (512, 8192)
    rss_small = peak_rss_mb(paths[best_ort], work / "rss_small", small)
    rss_large = peak_rss_mb(paths[best_ort], work / "rss_large", large)
    cold = min(time_to_first_image(paths[best_ort], work / f"cold_{i}") for i in range(3))

    peak = peaks["matmul_peak_gflops"]
    return {
        "sampler_images_per_sec": speeds,
        "sampler_best_variant": best_ort,
        "torch_best_mode": best_torch,
        "sampler_ort_vs_torch": speeds[f"ort_{best_ort}"] / eager,
        "sampler_ort_vs_torch_by_variant": {p: speeds[f"ort_{p}"] / eager for p in VARIANTS},
        "sampler_ort_vs_torch_best": speeds[f"ort_{best_ort}"] / speeds[f"torch_{best_torch}"],
        "sampler_end_to_end_fraction": end_to_end["png"],
        "sampler_end_to_end_fraction_npz": end_to_end["npz"],
        "sampler_cold_start_s": cold,
        "sampler_rss_mb": {str(small): rss_small, str(large): rss_large},
        "sampler_rss_growth": rss_large / rss_small,
        "generator_gflop_per_image": flops / 1e9,
        "generator_gflops_fraction": {
            "torch_fp32_eager_vs_fp32_peak": flops * eager / 1e9 / peak["fp32"],
            "ort_fp32_vs_fp32_peak": flops * speeds["ort_fp32"] / 1e9 / peak["fp32"],
            "ort_int8_vs_int8_peak": flops * speeds["ort_int8"] / 1e9 / peak["int8_ort"],
        } | ({"torch_bf16_vs_bf16_peak": flops * speeds["torch_bf16_channels_last"] / 1e9 / peak["bf16"]}
             if bf16 else {}),
        "onnx_file_mb": {p: paths[p].stat().st_size / 2**20 for p in VARIANTS},
    }
