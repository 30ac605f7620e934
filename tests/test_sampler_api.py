"""The Sampler Python API: metadata, values, determinism, latents, providers, caching, imports."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from onnx_models import make_model, reference_images

from ganaug.errors import UserError
from ganaug.sampler import BLOCK_SIZE, LatentSource, Sampler
from ganaug.sampler.sampler import _IoBindingRunner, latent_block

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(
        tmp_path_factory.mktemp("models") / "g.onnx",
        z_dim=8,
        num_classes=3,
        class_names=["cat", "dog", "fox"],
        shape=(8, 8, 1),
    )


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory):
    return make_model(
        tmp_path_factory.mktemp("models") / "rgb.onnx", z_dim=16, num_classes=4, shape=(6, 5, 3), seed=1
    )


@pytest.fixture
def ganaug_logs(caplog):
    """The CLI's setup_logging stops propagation of 'ganaug' loggers; listen on it directly."""
    logger = logging.getLogger("ganaug")
    propagate = logger.propagate
    logger.propagate = False  # else caplog would see each record twice
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="ganaug")
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.propagate = propagate


def test_meta_exposes_the_contract(model):
    sampler = Sampler.load(model, provider="cpu")
    meta = sampler.meta
    assert (meta.z_dim, meta.num_classes, meta.image_shape) == (8, 3, (8, 8, 1))
    assert meta.class_names == ("cat", "dog", "fox")
    assert (meta.precision, meta.train_step, meta.checkpoint_sha256) == ("fp32", 1234, "0" * 64)
    import hashlib

    with open(model, "rb") as f:
        assert meta.sha256 == hashlib.sha256(f.read()).hexdigest()
    assert meta.conditional
    assert sampler.provider == "CPUExecutionProvider"


def test_generate_matches_numpy_reference(rgb_model):
    sampler = Sampler.load(rgb_model, provider="cpu")
    images, labels = sampler.generate(40, seed=3, start=5)
    assert images.dtype == np.uint8 and images.shape == (40, 6, 5, 3)
    assert labels.dtype == np.int64
    assert labels.tolist() == [i % 4 for i in range(5, 45)]  # class of image i is i % k
    z = sampler.latents(np.arange(5, 45), seed=3)
    expected = reference_images(rgb_model, z, labels)
    # onnxruntime's tanh/GEMM differ from numpy's in the last bits: a rare pixel may round the other way.
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1
    assert (images == expected).mean() > 0.99
    assert images.std() > 20  # real content, not a constant


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory):
    return make_model(
        tmp_path_factory.mktemp("models") / "conv.onnx",
        z_dim=16,
        num_classes=3,
        shape=(12, 12, 3),
        conv_layers=2,
        conv_channels=8,
    )


@pytest.mark.parametrize("batch_size", [1, 7, 256])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("which", ["model", "conv_model"])
def test_images_do_not_depend_on_batch_size_or_threads(request, which, batch_size, threads):
    path = request.getfixturevalue(which)
    reference, reference_labels = Sampler.load(path, provider="cpu", threads=1).generate(
        300, seed=11, batch_size=300
    )
    images, labels = Sampler.load(path, provider="cpu", threads=threads).generate(
        300, seed=11, batch_size=batch_size
    )
    assert images.std() > 10
    assert np.array_equal(images, reference)
    assert np.array_equal(labels, reference_labels)


def test_image_i_depends_only_on_seed_and_index(model):
    sampler = Sampler.load(model, provider="cpu")
    full, _ = sampler.generate(2100, seed=5)  # spans three latent blocks
    part, part_labels = sampler.generate(200, seed=5, start=1000)  # crosses the block boundary at 1024
    assert np.array_equal(part, full[1000:1200])
    assert part_labels.tolist() == [i % 3 for i in range(1000, 1200)]
    scattered = np.array([2099, 3, 1024, 1023, 0])
    assert np.array_equal(
        sampler.latents(scattered, seed=5), sampler.latents(np.arange(2100), seed=5)[scattered]
    )
    other_seed, _ = sampler.generate(50, seed=6)
    assert not np.array_equal(other_seed, full[:50])


def test_latents_are_standard_normal_and_block_keyed():
    z = LatentSource(seed=0, z_dim=64).latents(np.arange(4 * BLOCK_SIZE))
    assert z.dtype == np.float32 and z.shape == (4 * BLOCK_SIZE, 64)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    # Blocks are independent streams: block 1 is not block 0 shifted, nor another seed's block 1.
    assert not np.array_equal(latent_block(0, 1, 64), latent_block(0, 0, 64))
    assert not np.array_equal(latent_block(0, 1, 64), latent_block(1, 1, 64))
    assert np.array_equal(latent_block(7, 3, 64), latent_block(7, 3, 64))
    # Negative seeds name a stream too (modulo 2**64).
    assert np.array_equal(latent_block(-1, 0, 4), latent_block(2**64 - 1, 0, 4))


def test_truncation_redraws_inside_the_bound():
    source = LatentSource(seed=0, z_dim=32, truncation=0.5)
    z = source.latents(np.arange(3000))
    assert np.abs(z).max() <= 0.5
    assert np.abs(z).mean() > 0.2  # redrawn, not clipped to the bound or zeroed
    assert (np.abs(z) == 0.5).mean() < 0.001
    assert np.array_equal(z[2000:2010], LatentSource(0, 32, 0.5).latents(np.arange(2000, 2010)))
    with pytest.raises(ValueError):
        LatentSource(0, 32, truncation=0.001)


def test_label_options(model):
    sampler = Sampler.load(model, provider="cpu")
    _, labels = sampler.generate(6, labels="fox")
    assert labels.tolist() == [2] * 6
    _, labels = sampler.generate(6, classes=["fox", "cat"])
    assert labels.tolist() == [0, 2, 0, 2, 0, 2]  # selection in model order, i % k
    images, labels = sampler.generate(3, labels=[1, "cat", 2], seed=4)
    assert labels.tolist() == [1, 0, 2]
    # Same latent, different label: the image changes with the label (conditioning reaches the output).
    relabelled, _ = sampler.generate(3, labels=[0, 0, 0], seed=4)
    assert np.array_equal(relabelled[1], images[1]) and not np.array_equal(relabelled[0], images[0])
    with pytest.raises(UserError, match="unknown class 'zebra'.*'cat', 'dog', 'fox'"):
        sampler.generate(2, labels="zebra")


def test_batches_iterate_in_order(model):
    sampler = Sampler.load(model, provider="cpu")
    batches = list(sampler.batches(10, seed=2, start=3, batch_size=4))
    assert [b.indices.tolist() for b in batches] == [[3, 4, 5, 6], [7, 8, 9, 10], [11, 12]]
    images, labels = sampler.generate(10, seed=2, start=3)
    assert np.array_equal(np.concatenate([b.images for b in batches]), images)
    assert np.array_equal(np.concatenate([b.labels for b in batches]), labels)


def test_unconditional_model_is_one_class(tmp_path):
    path = make_model(tmp_path / "u.onnx", num_classes=0, conditional=False)
    sampler = Sampler.load(path, provider="cpu")
    assert not sampler.meta.conditional
    assert sampler.meta.class_names == ("unconditional",) and sampler.meta.num_classes == 1
    images, labels = sampler.generate(5)
    assert images.shape == (5, 8, 8, 1) and labels.tolist() == [0] * 5
    named = make_model(tmp_path / "u1.onnx", num_classes=1, class_names=["faces"], conditional=False)
    assert Sampler.load(named, provider="cpu").meta.class_names == ("faces",)


def test_io_binding_path_gives_the_same_images(model):
    """The CUDA path binds device buffers; on this CPU-only machine run the same code with device 'cpu'."""
    sampler = Sampler.load(model, provider="cpu")
    expected, _ = sampler.generate(20, seed=9)
    sampler._run = _IoBindingRunner(sampler.session, "cpu")
    images, _ = sampler.generate(20, seed=9)
    assert np.array_equal(images, expected)


@pytest.mark.parametrize("gpu", [True, False], ids=["gpu-driver", "no-gpu-driver"])
@pytest.mark.parametrize("provider", ["cuda", "tensorrt", "auto"])
def test_gpu_provider_falls_back_to_cpu_with_one_warning(model, provider, gpu, ganaug_logs, monkeypatch):
    """No GPU is usable on this machine. With a driver present (faked), a failing GPU provider is one
    WARNING; without one, `auto` says nothing (a debug line), while a provider asked for by name
    still warns."""
    import onnxruntime as ort

    import ganaug.sampler.runtime as session

    monkeypatch.setattr(session, "gpu_present", lambda: gpu)
    ganaug_logs.set_level(logging.DEBUG, logger="ganaug")
    sampler = Sampler.load(model, provider=provider)
    expected, _ = Sampler.load(model, provider="cpu").generate(8)
    assert sampler.provider == "CPUExecutionProvider"
    assert np.array_equal(sampler.generate(8)[0], expected)
    warnings = [r.getMessage() for r in ganaug_logs.records if r.levelno == logging.WARNING]
    gpu_listed = {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers())
    if provider == "auto" and not (gpu and gpu_listed):
        assert warnings == []  # a CPU-only onnxruntime, or no GPU on this machine: nothing to warn about
    else:
        assert len(warnings) == 1
        assert "using cpu" in warnings[0] and provider in warnings[0]
    skipped = [r.getMessage() for r in ganaug_logs.records if "not trying" in r.getMessage()]
    assert len(skipped) == (provider == "auto" and not gpu and bool(gpu_listed))
    assert all(r.levelno == logging.DEBUG for r in ganaug_logs.records if "not trying" in r.getMessage())


def test_gpu_probe_looks_for_the_nvidia_driver(monkeypatch):
    import ganaug.sampler.runtime as session

    seen = []
    monkeypatch.setattr(session.os.path, "exists", lambda path: seen.append(path) or path == "/proc/driver/nvidia")
    assert session.gpu_present()
    monkeypatch.setattr(session.os.path, "exists", lambda path: False)
    assert not session.gpu_present()
    assert "/dev/nvidiactl" in seen


def test_unknown_provider_is_a_user_error(model):
    with pytest.raises(UserError, match="unknown provider 'tpu'"):
        Sampler.load(model, provider="tpu")


def test_optimised_model_cache(model, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("GANAUG_ORT_CACHE", str(cache))
    first = Sampler.load(model, provider="cpu")
    files = [name for name in os.listdir(cache) if name.endswith(".onnx")]
    assert len(files) == 1 and files[0].startswith(first.meta.sha256)
    assert not [name for name in os.listdir(cache) if name.endswith(".tmp")]
    second = Sampler.load(model, provider="cpu")  # from the cache
    assert second.meta == first.meta
    assert np.array_equal(second.generate(30, seed=1)[0], first.generate(30, seed=1)[0])
    monkeypatch.setenv("GANAUG_ORT_CACHE", "0")
    Sampler.load(model, provider="cpu")
    assert len(os.listdir(cache)) == 1


def test_unusable_cache_dir_only_warns(model, tmp_path, monkeypatch, ganaug_logs):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("GANAUG_ORT_CACHE", str(blocker / "cache"))
    sampler = Sampler.load(model, provider="cpu")
    assert sampler.generate(2)[0].shape == (2, 8, 8, 1)
    assert ["not caching the optimised model" in r.getMessage() for r in ganaug_logs.records] == [True]


def test_sampler_and_cli_never_import_torch(model, tmp_path):
    code = (
        "import sys\n"
        "import ganaug.sampler, ganaug.sampler.entry, ganaug.cli\n"
        "assert 'torch' not in sys.modules, 'import'\n"
        "from ganaug.cli import main\n"
        f"argv = ['sample', {model!r}, '--n', '5', '--out', {str(tmp_path / 'out')!r}, '--no-progress']\n"
        "assert main(argv) == 0\n"
        "assert 'torch' not in sys.modules, 'sample'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert len(os.listdir(tmp_path / "out")) == 5  # 3 class dirs, manifest, sample_info


def test_physical_cores_is_within_the_cpus_we_may_use():
    from ganaug.sampler.runtime import physical_cores, session_options

    cores = physical_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    assert session_options(0).intra_op_num_threads == cores
    assert session_options(3).intra_op_num_threads == 3


def test_quantized_graphs_are_recognised_for_their_layout_settings():
    from onnx import TensorProto, helper

    from ganaug.sampler.runtime import _is_quantized

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.1])
    qdq = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "scale"], ["q"]),
                             helper.make_node("DequantizeLinear", ["q", "scale"], ["y"])], "qdq", [x], [y], [scale])
    plain = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "plain", [x], [y])
    assert _is_quantized(helper.make_model(qdq).SerializeToString())
    assert not _is_quantized(helper.make_model(plain).SerializeToString())
    assert not _is_quantized("a/path.onnx")  # a cached, already optimised model: nothing left to choose


@pytest.mark.parametrize("shape", [(32, 32, 1), (7, 13, 1), (5, 9, 3), (16, 8, 4), (1, 1, 3), (40, 40, 3)])
def test_png_encoder_round_trips_through_pillow(shape):  # 40x40x3 is past the stored-only size
    import io

    from PIL import Image

    from ganaug.sampler.layout import encode_png

    image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    data = encode_png(image)
    assert data == encode_png(image.copy())  # the bytes are a function of the pixels
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.mode == {1: "L", 3: "RGB", 4: "RGBA"}[shape[2]]
        pixels = np.asarray(decoded)
    assert np.array_equal(pixels.reshape(shape), image)
