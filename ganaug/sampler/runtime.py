"""onnxruntime, the one way the sampler meets it: the import (a missing runtime said plainly, clashing
distributions in one WARNING line with the fix), a model file checked and loaded on the best working
provider (docs/sampler.md, "Providers and speed"), and failures as one-line UserErrors. `Sampler` and
`ImageFilter` both load through `load_model`.

A model's bytes are checked before onnxruntime reads them ("Hostile model files"): onnxruntime, given a
model as bytes, reads a tensor's external data relative to the current directory, and no option refuses
it. So `check_self_contained` walks the protobuf wire format itself (no `onnx`: not a sampler dependency)
wherever a tensor can sit, skipping weights by their length.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import platform
import re
from dataclasses import dataclass

import numpy as np

from ganaug.errors import UserError
from ganaug.files import temporary_beside

log = logging.getLogger(__name__)

# onnx.proto field numbers (tests/test_sampler_hostile_models.py checks them against onnx's descriptors).
# For each message: field number -> the message kind it holds, for the fields that can lead to a tensor.
CHILDREN = {
    "model": {7: "graph", 20: "training_info", 25: "function"},
    "training_info": {1: "graph", 2: "graph"},
    "function": {7: "node", 11: "attribute"},
    "graph": {1: "node", 5: "tensor", 15: "sparse_tensor"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse_tensor", 23: "sparse_tensor"},
    "sparse_tensor": {1: "tensor", 2: "tensor"},
    "tensor": {},
}
TENSOR_NAME, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 8, 13, 14
ENTRY_KEY, ENTRY_VALUE = 1, 2  # StringStringEntryProto
NODE_OP_TYPE = 4
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
MAX_DEPTH = 100  # nested messages; protobuf's own parsers stop at 100 too
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end and shift <= 63:
        byte, pos = data[pos], pos + 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise ValueError("a number runs past its message")


def _fields(data: memoryview, start: int, end: int):
    """(field number, wire type, value) of one message; value is (start, end) for length-delimited fields."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(data, pos, end)
        elif wire == _FIXED64 or wire == _FIXED32:
            value, pos = None, pos + (8 if wire == _FIXED64 else 4)
        elif wire == _LENGTH:
            length, pos = _varint(data, pos, end)
            value, pos = (pos, pos + length), pos + length
        else:
            raise ValueError(f"wire type {wire} in field {number}")
        if pos > end:
            raise ValueError(f"field {number} runs past its message")
        yield number, wire, value


def _text(data: memoryview, span: tuple[int, int], limit: int = 80) -> str:
    text = bytes(data[span[0] : min(span[1], span[0] + limit)]).decode("utf-8", errors="replace")
    return repr(text + ("..." if span[1] - span[0] > limit else ""))


def check_self_contained(model: bytes, source: str) -> None:
    """Raise a UserError if the serialised ModelProto refers to data outside itself (or is not one)."""
    data, stack = memoryview(model), [("model", 0, len(model), 0)]
    try:
        while stack:
            kind, start, end, depth = stack.pop()
            if depth > MAX_DEPTH:
                raise UserError(f"{source}: the model nests its graphs more than {MAX_DEPTH} messages deep")
            name, location, external = "", None, False
            for number, wire, value in _fields(data, start, end):
                if kind == "tensor" and number == TENSOR_NAME and wire == _LENGTH:
                    name = _text(data, value)
                elif kind == "tensor" and number == TENSOR_DATA_LOCATION and wire == _VARINT and value == EXTERNAL:
                    external = True
                elif kind == "tensor" and number == TENSOR_EXTERNAL_DATA and wire == _LENGTH:
                    external, entry = True, {n: v for n, w, v in _fields(data, *value) if w == _LENGTH}
                    if bytes(data[slice(*entry.get(ENTRY_KEY, (0, 0)))]) == b"location" and ENTRY_VALUE in entry:
                        location = _text(data, entry[ENTRY_VALUE])
                elif kind == "node" and number == NODE_OP_TYPE and wire == _LENGTH:
                    if bytes(data[slice(*value)]) == b"EPContext":
                        raise UserError(f"{source}: the model holds an EPContext node (a precompiled execution-"
                                        "provider graph that may load other files); export the plain ONNX graph instead")
                elif number in CHILDREN[kind] and wire == _LENGTH:
                    stack.append((CHILDREN[kind][number], *value, depth + 1))
            if external:
                raise UserError(f"{source}: tensor {name or '(unnamed)'} keeps its data in an external file"
                                f"{f' ({location})' if location else ''}; a ganaug model holds all its weights inside "
                                "the .onnx file, and this sampler reads nothing else")
    except ValueError as exc:  # from _varint and _fields
        raise UserError(f"cannot load {source} as an ONNX model: not a valid protobuf message ({exc})") from None


DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-qnn",
                 "onnxruntime-rocm", "onnxruntime-training")
INSTALL_HINT = "pip install 'ganaug[cpu]' (or 'ganaug[gpu]' on a host with an NVIDIA GPU)"


class RuntimeMissing(UserError, ImportError):
    """onnxruntime cannot be imported: one line for `ganaug sample`, an ImportError for library users."""


def installed_distributions() -> list[str]:
    """'name version' of each onnxruntime distribution installed here."""
    found = []
    for name in DISTRIBUTIONS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    return found


def warn_if_several_installed() -> bool:
    found = installed_distributions()
    if len(found) > 1:
        log.warning("%s are installed at once; they overwrite each other's files, so the providers that work are "
                    "unpredictable. Fix: pip uninstall -y %s, then %s", " and ".join(found),
                    " ".join(entry.split()[0] for entry in found), INSTALL_HINT)
    return len(found) > 1


try:
    import onnxruntime as ort
except ImportError as exc:
    raise RuntimeMissing(f"onnxruntime cannot be imported ({exc}); {INSTALL_HINT}") from None
warn_if_several_installed()

# What onnxruntime's binding raises for a model, a provider or a run it cannot handle.
_state = ort.capi.onnxruntime_pybind11_state
ORT_ERRORS = (*(v for v in vars(_state).values() if isinstance(v, type) and issubclass(v, Exception)), RuntimeError)
PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
PREFERENCE = {"auto": ("tensorrt", "cuda", "cpu"), "tensorrt": ("tensorrt", "cuda", "cpu"), "cuda": ("cuda", "cpu"),
              "cpu": ("cpu",)}
GPU_PROVIDERS = (PROVIDERS["tensorrt"], PROVIDERS["cuda"])
CACHE_ENV = "GANAUG_ORT_CACHE"  # "1": the default cache directory; another value: the directory itself
VERBOSE_ENV = "GANAUG_ORT_VERBOSE"  # "1": keep onnxruntime's own messages
_NVIDIA_DRIVER_PATHS = ("/dev/nvidiactl", "/proc/driver/nvidia")  # what the driver creates on Linux
# In int8 graphs, the NHWC rewrite of QLinearConv makes each uint8 nearest-neighbour Resize much slower,
# and the NCHWc blocking of the float last layer adds reorders (docs/performance.md). Float graphs keep both.
QUANTIZED_GRAPH_SKIPS = ["NhwcTransformer", "NchwcTransformer"]


def gpu_present() -> bool:
    """Is an NVIDIA driver loaded? (Linux; elsewhere assume so and let onnxruntime try.)"""
    return not os.path.isdir("/proc") or any(os.path.exists(path) for path in _NVIDIA_DRIVER_PATHS)


def short_provider(name: str) -> str:
    """'CUDAExecutionProvider' -> 'cuda'."""
    return {full: short for short, full in PROVIDERS.items()}.get(name, name)


def ort_message(exc: BaseException) -> str:
    """The first line of an onnxruntime error, without its prefix, C++ location and node boilerplate."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if text.startswith("[ONNXRuntimeError]"):
        text = text.split(" : ")[-1].strip()
    text = re.sub(r"^\S+\.(?:cc|cpp|h):\d+ .*?\) ", "", text)  # "/src/x.cc:729 void f(A&, B&) Message"
    return re.sub(r"^Non-zero status code returned while running (\S+) node\. Name:'[^']*' Status Message: ",
                  r"\1: ", text)


def physical_cores() -> int:
    """Physical cores this process may run on (a hyper-thread shares its core's arithmetic units)."""
    if not hasattr(os, "sched_getaffinity"):  # macOS, Windows
        return os.cpu_count() or 1
    cpus, cores = os.sched_getaffinity(0), set()
    for cpu in cpus:
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{topology}/physical_package_id") as package, open(f"{topology}/core_id") as core:
                cores.add((package.read().strip(), core.read().strip()))
        except OSError:  # not Linux, or an odd container
            return max(1, len(cpus))
    return max(1, len(cores))


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads if threads > 0 else physical_cores()
    # A generator is a chain of layers: nothing to gain from running branches in parallel.
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning idle threads would steal the cores the PNG writer threads need between runs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def run_options() -> ort.RunOptions:
    """A failing run is reported once, as our own error line (unless GANAUG_ORT_VERBOSE=1)."""
    options = ort.RunOptions()
    if os.environ.get(VERBOSE_ENV) != "1":
        options.log_severity_level = 4
    return options


def _is_quantized(model: bytes | str) -> bool:
    """Does the serialised graph hold QDQ nodes? (op types are plain strings; a path is a cached graph)"""
    return isinstance(model, bytes) and b"QuantizeLinear" in model


def _new_session(model: bytes | str, providers: list[str], threads: int, cache_dir: str | None = None,
                 save_to: str | None = None):
    options = session_options(threads)
    if isinstance(model, str):  # a cached graph, optimised already
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if save_to:
        options.optimized_model_filepath = save_to
    trt_cache = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": os.path.join(cache_dir or "", "tensorrt")}
    return ort.InferenceSession(
        model, options, providers=providers, enable_fallback=0,
        provider_options=[trt_cache if p == PROVIDERS["tensorrt"] and cache_dir else {} for p in providers],
        disabled_optimizers=QUANTIZED_GRAPH_SKIPS if _is_quantized(model) else None)


def cpu_session(model: bytes, threads: int = 0):
    """A CPU session set up as `ganaug sample` sets it up (the exporter verifies and times with it)."""
    check_self_contained(model, "the model")
    return _new_session(model, [PROVIDERS["cpu"]], threads)


def _cached_session(model: bytes, sha256: str, providers: list[str], threads: int, cache_dir: str | None):
    """A session, from or into the optimised-model cache where one is configured (TensorRT compiles into
    nodes that cannot be saved: it keeps its own engine cache)."""
    if not cache_dir or providers[0] == PROVIDERS["tensorrt"]:
        return _new_session(model, providers, threads, cache_dir)

    def cached(provider: str) -> str:  # an optimised graph may hold kernels for this CPU: keyed by all that shaped it
        return os.path.join(cache_dir, f"{sha256}-{short_provider(provider)}-ort{ort.__version__}-{platform.machine()}"
                                       ".onnx")

    if os.path.exists(cached(providers[0])):
        try:
            return _new_session(cached(providers[0]), providers, threads, cache_dir)
        except ORT_ERRORS as exc:
            log.warning("ignoring unreadable optimised-model cache %s: %s", cached(providers[0]), ort_message(exc))
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as exc:  # a cache is an optimisation, never a reason to fail
        log.warning("not caching the optimised model: cannot create %s (%s)", cache_dir, exc.strerror or exc)
        return _new_session(model, providers, threads)
    try:
        session = _new_session(model, providers, threads, cache_dir, save_to=(temp := temporary_beside(cached("x"))))
        os.replace(temp, cached(session.get_providers()[0]))  # the provider it really got; atomic for readers
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return session


class RunFailed(UserError):
    """A model failed on a batch or broke its output contract: one line, with the reason apart."""

    def __init__(self, source: str, reason: str, context: str = ""):
        super().__init__(f"{source}: {context}{reason}")
        self.reason, self.context = reason, context


@dataclass
class LoadedModel:
    session: ort.InferenceSession
    provider: str  # the provider really in use
    sha256: str  # of the file
    source: str
    metadata: dict[str, str]


def load_model(path, what: str, provider: str = "auto", threads: int = 0, cache_dir: str | None = None) -> LoadedModel:
    """Read a model file (`what`: "model" or "classifier", for messages), check that it is self-contained
    and load it on the best working provider. cache_dir: the optimised-model cache (None: from
    GANAUG_ORT_CACHE, "1" for the default directory; off when unset)."""
    source = str(path)
    if provider not in PREFERENCE:
        raise UserError(f"unknown provider {provider!r} (choose from {', '.join(PREFERENCE)})")
    if threads < 0:
        raise UserError(f"--threads must be 0 (physical cores) or positive, got {threads}")
    try:
        with open(path, "rb") as f:
            model = f.read()
    except FileNotFoundError:
        raise UserError(f"{what} file {source} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} path {source} is a directory, not an .onnx file") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} file {source}: {exc.strerror or exc}") from None
    if not model:
        raise UserError(f"{what} file {source} is empty")
    check_self_contained(model, source)  # before onnxruntime could read any other file
    if cache_dir is None:
        value = os.environ.get(CACHE_ENV, "").strip()
        default = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ganaug", "ort")
        cache_dir = {"": None, "0": None, "1": default}.get(value, value)
    sha256 = hashlib.sha256(model).hexdigest()
    available, wanted = set(ort.get_available_providers()), [PROVIDERS[name] for name in PREFERENCE[provider]]
    problems = [f"{short_provider(p)} is not in this onnxruntime build"
                for p in wanted if p not in available and provider != "auto"]
    candidates = [p for p in wanted if p in available]
    if provider == "auto" and set(candidates) & set(GPU_PROVIDERS) and not gpu_present():
        log.debug("no NVIDIA driver (%s): not trying %s", ", ".join(_NVIDIA_DRIVER_PATHS),
                  ", ".join(short_provider(p) for p in candidates if p in GPU_PROVIDERS))
        candidates = [p for p in candidates if p not in GPU_PROVIDERS]
    candidates += [PROVIDERS["cpu"]] if PROVIDERS["cpu"] not in candidates else []
    while True:
        quiet = candidates[0] in GPU_PROVIDERS and os.environ.get(VERBOSE_ENV) != "1"
        if quiet:  # onnxruntime's own GPU errors would be many lines; ours is one
            ort.set_default_logger_severity(4)
        try:
            session = _cached_session(model, sha256, candidates, threads, cache_dir)
        except ORT_ERRORS as exc:
            if candidates[0] not in GPU_PROVIDERS:
                raise UserError(f"cannot load {source} as an ONNX model: {ort_message(exc)}") from None
            problems.append(f"{short_provider(candidates.pop(0))} failed: {ort_message(exc)}")
            continue
        finally:
            if quiet:
                ort.set_default_logger_severity(3)  # errors only: onnxruntime has no getter to restore
        break
    actual = session.get_providers()[0]
    # onnxruntime drops a provider that fails to start (e.g. no CUDA device) without raising
    problems += [f"{short_provider(p)} did not start" for p in candidates[:candidates.index(actual)]]
    if problems:
        log.warning("provider %s: %s; using %s (set %s=1 to see onnxruntime's messages)", provider,
                    "; ".join(problems), short_provider(actual), VERBOSE_ENV)
    return LoadedModel(session, actual, sha256, source, dict(session.get_modelmeta().custom_metadata_map))


def run_checked(run, feeds, count: int, source: str) -> np.ndarray:
    """run(feeds), an onnxruntime failure as RunFailed naming the batch."""
    try:
        return run(feeds)
    except ORT_ERRORS as exc:
        message = ort_message(exc)
        raise RunFailed(source, message if len(message) <= 160 else message[:157] + "...",
                        f"onnxruntime failed on a batch of {count} images: ") from None
