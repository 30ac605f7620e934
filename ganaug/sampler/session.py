"""onnxruntime session set-up: provider choice with fallback, session options, optional cache.

Provider choice: "auto" tries TensorRT, then CUDA, then CPU, keeping those this onnxruntime build
lists as available, and skips the GPU providers quietly (a debug line) on a machine without an
NVIDIA driver: onnxruntime-gpu on a CPU-only host is a normal set-up, not worth a warning on every
run. Where a GPU is present, or a GPU provider was asked for by name, a provider can still fail
(a CUDA library missing): onnxruntime then either raises or silently drops it. Either way we ask the
session which provider it really got, fall back to the next one, and say so in one WARNING line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re

from ganaug.errors import UserError
from ganaug.files import temporary_beside
from ganaug.sampler.modelfile import check_self_contained
from ganaug.sampler.runtime import ort

ort_state = ort.capi.onnxruntime_pybind11_state

log = logging.getLogger(__name__)

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
PREFERENCE = {
    "auto": ("tensorrt", "cuda", "cpu"),
    "tensorrt": ("tensorrt", "cuda", "cpu"),
    "cuda": ("cuda", "cpu"),
    "cpu": ("cpu",),
}
GPU_PROVIDERS = (PROVIDERS["tensorrt"], PROVIDERS["cuda"])
CACHE_ENV = "GANAUG_ORT_CACHE"  # "1": default cache dir; another value: the cache dir itself
VERBOSE_ENV = "GANAUG_ORT_VERBOSE"  # "1": keep onnxruntime's own messages while probing GPU providers

# The errors onnxruntime's Python binding raises for a model or provider it cannot load.
ORT_ERRORS = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidProtobuf,
    ort_state.InvalidGraph,
    ort_state.NoSuchFile,
    ort_state.NoModel,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
    ort_state.EPFail,
    ort_state.EngineError,
    RuntimeError,
)


# What the NVIDIA driver creates on Linux; no driver, no usable CUDA device.
_NVIDIA_DRIVER_PATHS = ("/dev/nvidiactl", "/proc/driver/nvidia")


def gpu_present() -> bool:
    """Is an NVIDIA driver loaded on this machine? (Linux; elsewhere assume yes and let onnxruntime try.)"""
    if not os.path.isdir("/proc"):
        return True
    return any(os.path.exists(path) for path in _NVIDIA_DRIVER_PATHS)


def short_provider(name: str) -> str:
    """'CUDAExecutionProvider' -> 'cuda'."""
    return {full: short for short, full in PROVIDERS.items()}.get(name, name)


def ort_message(exc: BaseException) -> str:
    """First line of an onnxruntime error, without its '[ONNXRuntimeError] : 7 : CODE :' prefix."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if text.startswith("[ONNXRuntimeError]"):
        text = text.split(" : ")[-1].strip()
    # Drop the C++ source location and signature ("/src/x.cc:729 void f(A&, B&) Message").
    text = re.sub(r"^\S+\.(?:cc|cpp|h):\d+ .*?\) ", "", text)
    # "Non-zero status code returned while running Gather node. Name:'' Status Message: x" -> "Gather: x"
    return re.sub(r"^Non-zero status code returned while running (\S+) node\. Name:'[^']*' Status Message: ",
                  r"\1: ", text)


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share a core's arithmetic units).

    Counts distinct (package, core) pairs of the CPUs in our affinity mask from sysfs; where that
    is not readable (not Linux, odd containers), counts the CPUs we may use.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS / Windows
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{topology}/physical_package_id") as package, open(f"{topology}/core_id") as core:
                cores.add((package.read().strip(), core.read().strip()))
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # One intra-op thread per physical core; a second thread on a hyper-thread slows GEMMs down.
    options.intra_op_num_threads = threads if threads > 0 else physical_cores()
    # A generator is a chain of layers: nothing to gain from running graph branches in parallel.
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle intra-op threads would otherwise spin between runs and steal the cores that the PNG
    # encoder threads need while inference waits for the next batch.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def run_options() -> ort.RunOptions:
    """Options for every inference call: a failing run is reported once, as our own error line,
    not also as onnxruntime's log line (unless GANAUG_ORT_VERBOSE=1)."""
    options = ort.RunOptions()
    if os.environ.get(VERBOSE_ENV) != "1":
        options.log_severity_level = 4
    return options


def cache_dir_from_env() -> str | None:
    value = os.environ.get(CACHE_ENV, "").strip()
    if value in ("", "0"):
        return None
    if value == "1":
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(base, "ganaug", "ort")
    return value


def _cached_model_path(cache_dir: str, sha256: str, provider: str) -> str:
    # An optimised graph may hold hardware-specific kernels (e.g. NCHWc layouts for this CPU's
    # vector width): key it by everything that shaped it.
    name = f"{sha256}-{short_provider(provider)}-ort{ort.__version__}-{platform.machine()}.onnx"
    return os.path.join(cache_dir, name)


@contextlib.contextmanager
def _quiet_ort(active: bool):
    """Silence onnxruntime's global logger while GPU providers are probed: we log one line instead."""
    if not active or os.environ.get(VERBOSE_ENV) == "1":
        yield
        return
    ort.set_default_logger_severity(4)
    try:
        yield
    finally:
        ort.set_default_logger_severity(3)  # errors only; onnxruntime offers no getter to restore


def _provider_options(provider: str, cache_dir: str | None) -> dict:
    if provider == PROVIDERS["tensorrt"] and cache_dir:
        return {
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": os.path.join(cache_dir, "tensorrt"),
        }
    return {}


# In int8 graphs, onnxruntime's NHWC rewrite of QLinearConv makes each uint8 nearest-neighbour
# Resize much slower than in NCHW, and the NCHWc blocking of the float last layer adds reorders:
# int8 generation is faster without both (docs/performance.md). Float graphs keep them.
QUANTIZED_GRAPH_SKIPS = ["NhwcTransformer", "NchwcTransformer"]


def _is_quantized(model: bytes | str) -> bool:
    """Does the serialised graph hold QDQ nodes? (op types are stored as plain strings)"""
    return isinstance(model, bytes) and b"QuantizeLinear" in model


def _new_session(
    model: bytes | str, options: ort.SessionOptions, providers: list[str], cache_dir: str | None
):
    provider_options = [_provider_options(p, cache_dir) for p in providers]
    return ort.InferenceSession(
        model, options, providers=providers, provider_options=provider_options, enable_fallback=0,
        disabled_optimizers=QUANTIZED_GRAPH_SKIPS if _is_quantized(model) else None,
    )


def cpu_session(model: bytes, threads: int = 0) -> ort.InferenceSession:
    """A CPU session set up as `ganaug sample` sets it up: the exporter verifies and times with it."""
    check_self_contained(model, "the model")
    return _new_session(model, session_options(threads), [PROVIDERS["cpu"]], None)


def _create_with_cache(
    model_bytes: bytes, sha256: str, providers: list[str], threads: int, cache_dir: str | None
):
    """A session for `providers`, using or filling the optimised-model cache when one is configured."""
    # TensorRT compiles subgraphs into nodes that cannot be serialised; it has its own engine cache.
    if not cache_dir or providers[0] == PROVIDERS["tensorrt"]:
        return _new_session(model_bytes, session_options(threads), providers, cache_dir)
    cached = _cached_model_path(cache_dir, sha256, providers[0])
    if os.path.exists(cached):
        options = session_options(threads)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # done already
        try:
            return _new_session(cached, options, providers, cache_dir)
        except ORT_ERRORS as exc:
            log.warning("ignoring unreadable optimised-model cache %s: %s", cached, ort_message(exc))
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as exc:  # a cache is an optimisation: never a reason to fail
        log.warning("not caching the optimised model: cannot create %s (%s)", cache_dir, exc.strerror or exc)
        return _new_session(model_bytes, session_options(threads), providers, None)
    temp = temporary_beside(_cached_model_path(cache_dir, sha256, providers[0]))
    options = session_options(threads)
    options.optimized_model_filepath = temp
    try:
        session = _new_session(model_bytes, options, providers, cache_dir)
        # Keyed by the provider the session really got (a GPU provider may have been dropped);
        # the rename is atomic, so a concurrent reader sees the whole file or none.
        os.replace(temp, _cached_model_path(cache_dir, sha256, session.get_providers()[0]))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return session


def create_session(
    model_bytes: bytes,
    sha256: str,
    source: str,
    provider: str = "auto",
    threads: int = 0,
    cache_dir: str | None = None,
):
    """Create an InferenceSession on the best working provider; return (session, provider name)."""
    if provider not in PREFERENCE:
        raise UserError(f"unknown provider {provider!r} (choose from {', '.join(PREFERENCE)})")
    if threads < 0:
        raise UserError(f"--threads must be 0 (physical cores) or positive, got {threads}")
    check_self_contained(model_bytes, source)  # before onnxruntime could read any other file
    available = set(ort.get_available_providers())
    wanted = [PROVIDERS[name] for name in PREFERENCE[provider]]
    problems = [
        f"{short_provider(p)} is not in this onnxruntime build"
        for p in wanted
        if p not in available and provider != "auto"
    ]
    candidates = [p for p in wanted if p in available]
    if provider == "auto" and any(p in GPU_PROVIDERS for p in candidates) and not gpu_present():
        log.debug("no NVIDIA driver (%s): not trying %s", ", ".join(_NVIDIA_DRIVER_PATHS),
                  ", ".join(short_provider(p) for p in candidates if p in GPU_PROVIDERS))
        candidates = [p for p in candidates if p not in GPU_PROVIDERS]
    if PROVIDERS["cpu"] not in candidates:
        candidates.append(PROVIDERS["cpu"])
    while True:
        try:
            with _quiet_ort(active=candidates[0] in GPU_PROVIDERS):
                session = _create_with_cache(model_bytes, sha256, candidates, threads, cache_dir)
        except ORT_ERRORS as exc:
            if candidates[0] not in GPU_PROVIDERS:
                raise UserError(f"cannot load {source} as an ONNX model: {ort_message(exc)}") from None
            problems.append(f"{short_provider(candidates[0])} failed: {ort_message(exc)}")
            candidates = candidates[1:]
            continue
        actual = session.get_providers()[0]
        # onnxruntime drops a provider that fails to initialise (e.g. no CUDA device) without raising.
        dropped = candidates[: candidates.index(actual)] if actual in candidates else []
        problems += [f"{short_provider(p)} did not start" for p in dropped]
        break
    if problems:
        log.warning(
            "provider %s: %s; using %s (set %s=1 to see onnxruntime's messages)",
            provider,
            "; ".join(problems),
            short_provider(actual),
            VERBOSE_ENV,
        )
    return session, actual
