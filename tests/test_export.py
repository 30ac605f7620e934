"""`ganaug export`: round trips, the ONNX contract, metadata, verification, fp16 / int8 variants.

Each export runs once per module (`export` fixture) and the tests read the files it wrote.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import ganaug.export.verify as verify
from ganaug.cli import main
from ganaug.export.inputs import random_inputs
from ganaug.export.onnx_export import DEFAULT_OPSET, drop_output, export_onnx
from ganaug.export.source import load_generator
from ganaug.export.wrapper import FLOAT_IMAGES, ImageGenerator

CONTRACT_KEYS = ("ganaug.schema", "ganaug.z_dim", "ganaug.num_classes", "ganaug.class_names", "ganaug.image_shape",
                 "ganaug.precision", "ganaug.train_step", "ganaug.checkpoint_sha256")
RUNS = {  # name -> trained_run overrides
    "cond16": (),
    "uncond16": ("model.conditional=false",),
    "article28": ("data.resolution=28", "model.arch=article28"),
    "resnet16": ("model.arch=resnet",),
}


@pytest.fixture(scope="module")
def export(trained_run, tmp_path_factory):
    """export(run, *flags) -> (run_dir, model path, stderr of the export); each combination exported once."""
    cache = {}

    def make(run: str, *flags: str):
        key = (run, *flags)
        if key not in cache:
            run_dir = trained_run(*RUNS[run])
            out = tmp_path_factory.mktemp("export") / "model.onnx"
            code = main(["export", str(run_dir), "--out", str(out), *flags])
            assert code == 0, f"export {key} failed with {code}"
            cache[key] = (run_dir, out)
        return cache[key]

    return make


def torch_images(run_dir, feeds: dict[str, np.ndarray], weights: str = "ema") -> np.ndarray:
    """The checkpoint's generator in PyTorch, with the contract's post-processing: uint8 NHWC."""
    module = ImageGenerator(load_generator(run_dir, weights).generator)
    return verify.run_torch_reference(module, feeds)[0]


def onnx_images(path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["images"], feeds)[0]


def metadata(path) -> dict[str, str]:
    return {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}


def io_signature(path) -> dict:
    model = onnx.load(str(path))

    def describe(value):
        tensor = value.type.tensor_type
        return onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type), [d.dim_param or d.dim_value for d in tensor.shape.dim]

    return {"inputs": {v.name: describe(v) for v in model.graph.input},
            "outputs": {v.name: describe(v) for v in model.graph.output}}


def only_file_in_folder(path) -> bool:
    return os.listdir(path.parent) == [path.name]


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_conditional_round_trip_at_dynamic_batch_sizes(export, batch):
    run_dir, path = export("cond16")
    feeds = random_inputs(load_generator(run_dir).spec, batch, seed=batch)
    images = onnx_images(path, feeds)
    assert images.dtype == np.uint8 and images.shape == (batch, 16, 16, 1)
    expected = torch_images(run_dir, feeds)
    # Float kernels differ (oneDNN vs MLAS) by ~1e-4 grey levels; rounding may flip a level, no more.
    assert np.abs(images.astype(int) - expected).max() <= 1
    assert (images == expected).mean() > 0.999
    assert images.std() > 0  # a real image, not a constant


def test_conditional_model_follows_the_contract(export):
    run_dir, path = export("cond16")
    signature = io_signature(path)
    assert signature == {"inputs": {"z": (np.float32, ["N", 16]), "labels": (np.int64, ["N"])},
                         "outputs": {"images": (np.uint8, ["N", 16, 16, 1])}}
    model = onnx.load(str(path), load_external_data=False)
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    assert only_file_in_folder(path)  # self-contained: no external data file, no temporary file left
    assert {entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")} == {DEFAULT_OPSET}
    onnx.checker.check_model(model, full_check=True)


def test_unconditional_round_trip_at_opset_17_prints_error_and_size(trained_run, tmp_path, capsys):
    run_dir, path = trained_run(*RUNS["uncond16"]), tmp_path / "g.onnx"
    assert main(["export", str(run_dir), "--out", str(path), "--opset", "17"]) == 0
    err = capsys.readouterr().err
    assert "max error" in err and f"{path.stat().st_size / 1024:.1f} KiB" in err and str(path) in err
    assert list(io_signature(path)["inputs"]) == ["z"]
    model = onnx.load(str(path))
    assert {entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")} == {17}
    feeds = random_inputs(load_generator(run_dir).spec, 7, seed=3)
    assert "labels" not in feeds
    images = onnx_images(path, feeds)
    assert np.abs(images.astype(int) - torch_images(run_dir, feeds)).max() <= 1
    meta = metadata(path)
    assert meta["ganaug.num_classes"] == "0" and json.loads(meta["ganaug.class_names"]) == []


def test_article28_architecture_round_trip_at_28(export):
    run_dir, path = export("article28")
    model = onnx.load(str(path))
    assert "ConvTranspose" in {node.op_type for node in model.graph.node}
    assert io_signature(path)["outputs"]["images"] == (np.uint8, ["N", 28, 28, 1])
    feeds = random_inputs(load_generator(run_dir).spec, 64, seed=5)
    images = onnx_images(path, feeds)
    assert np.abs(images.astype(int) - torch_images(run_dir, feeds)).max() <= 1
    assert metadata(path)["ganaug.arch"] == "article28"


def test_resnet_architecture_round_trip(export):
    run_dir, path = export("resnet16")
    assert metadata(path)["ganaug.arch"] == "resnet"
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "ConvTranspose" not in ops and "Resize" in ops
    parity = json.loads(metadata(path)["ganaug.parity"])["fp32"]
    assert parity["within_thresholds"] and parity["max_error"] <= verify.THRESHOLDS["fp32"].max_error
    feeds = random_inputs(load_generator(run_dir).spec, 64, seed=5)
    images = onnx_images(path, feeds)
    assert images.shape == (64, 16, 16, 1) and images.std() > 0
    assert np.abs(images.astype(int) - torch_images(run_dir, feeds)).max() <= 1
    # The label reaches the pixels through the conditional BatchNorm (after a few steps, faintly).
    same_z = {"z": np.repeat(feeds["z"][:1], 10, axis=0), "labels": np.arange(10, dtype=np.int64)}
    floats = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, same_z)[0]
    assert len({image.tobytes() for image in floats}) > 1


def test_metadata_is_present_and_right(export):
    run_dir, path = export("cond16")
    meta = metadata(path)
    assert set(CONTRACT_KEYS) <= set(meta)
    checkpoint = run_dir / "checkpoints" / "last.pt"
    state = torch.load(checkpoint, weights_only=True)
    assert meta["ganaug.schema"] == "1"
    assert meta["ganaug.z_dim"] == "16"
    assert meta["ganaug.num_classes"] == "10"
    assert json.loads(meta["ganaug.class_names"]) == state["class_names"] and len(state["class_names"]) == 10
    assert json.loads(meta["ganaug.image_shape"]) == [16, 16, 1]
    assert meta["ganaug.precision"] == "fp32"
    assert meta["ganaug.train_step"] == str(state["step"]) == "4"
    assert onnx.load(str(path)).model_version == 4  # ONNX's own version field: the training step
    assert meta["ganaug.checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert meta["ganaug.weights"] == "ema" and meta["ganaug.arch"] == "dcgan"
    parity = json.loads(meta["ganaug.parity"])["fp32"]
    assert parity["within_thresholds"] and parity["batch_sizes"] == [1, 7, 256]
    assert 0 <= parity["max_error"] <= verify.THRESHOLDS["fp32"].max_error


def test_sampler_reads_the_exported_model(export, tmp_path):
    _, path = export("cond16")
    out = tmp_path / "samples"
    assert main(["sample", str(path), "--n", "20", "--out", str(out), "--format", "npz", "--no-progress"]) == 0
    shards = list(out.glob("shard_*.npz"))
    with np.load(shards[0]) as data:
        assert data["images"].shape == (20, 16, 16, 1) and data["images"].dtype == np.uint8
        assert sorted(set(data["labels"].tolist())) == list(range(10))


def test_reference_evaluator_reproduces_onnxruntime(export):
    """A standards-conforming runtime other than onnxruntime gives the same images."""
    from onnx.reference import ReferenceEvaluator

    run_dir, path = export("cond16")
    feeds = random_inputs(load_generator(run_dir).spec, 3, seed=11)
    reference = ReferenceEvaluator(onnx.load(str(path))).run(["images"], feeds)[0]
    assert reference.dtype == np.uint8 and reference.shape == (3, 16, 16, 1)
    assert np.abs(reference.astype(int) - onnx_images(path, feeds)).max() <= 1


# ------------------------------------------------------------------------------ reduced precision


def check_within_documented_error(run_dir, path, precision: str, weights: str = "ema") -> dict:
    """New inputs (not the exporter's): mean and max error of the written model's uint8 images."""
    spec = load_generator(run_dir).spec
    feeds = random_inputs(spec, 128, seed=99)
    error = np.abs(onnx_images(path, feeds).astype(float) - torch_images(run_dir, feeds, weights))
    limits = verify.THRESHOLDS[precision]
    # uint8 images: rounding adds up to half a level on top of the documented (float) error.
    assert error.mean() <= limits.mean_error + 0.5, error.mean()
    assert error.max() <= limits.max_error + 1, error.max()
    return metadata(path)


def test_fp16_raw_weights_within_documented_error(export):
    run_dir, path = export("cond16", "--precision", "fp16", "--weights", "raw")
    model = onnx.load(str(path))
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
    assert io_signature(path)["inputs"]["z"][0] == np.float32  # I/O types kept
    meta = check_within_documented_error(run_dir, path, "fp16", weights="raw")
    assert meta["ganaug.precision"] == "fp16" and meta["ganaug.weights"] == "raw"
    parity = json.loads(meta["ganaug.parity"])
    assert parity["fp16"]["within_thresholds"] and parity["fp16"]["mean_error"] > 0


@pytest.mark.parametrize("run", ["cond16", "resnet16"])
def test_int8_within_documented_error(export, run):
    run_dir, path = export(run, "--precision", "int8")
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    meta = check_within_documented_error(run_dir, path, "int8")
    assert meta["ganaug.precision"] == "int8" and "ganaug.int8_note" not in meta
    parity = json.loads(meta["ganaug.parity"])["int8"]
    assert parity["within_thresholds"] and 0 < parity["mean_error"] <= verify.THRESHOLDS["int8"].mean_error
    assert parity["fd"] <= verify.THRESHOLDS["int8"].fd


# ------------------------------------------------------------------------------ verification failures


def test_parity_failure_fails_the_export_and_writes_nothing(trained_run, tmp_path, capsys, monkeypatch):
    real = verify.run_torch_reference

    def off_by_a_bit(module, feeds):  # as if a weight changed after tracing
        images, float_images = real(module, feeds)
        return images, float_images + 0.01

    monkeypatch.setattr(verify, "run_torch_reference", off_by_a_bit)
    out = tmp_path / "g.onnx"
    assert main(["export", str(trained_run()), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("ganaug export: error: parity check failed: fp32")
    assert "max error 1.27" in lines[-1]  # 0.01 * 127.5 grey levels, measured and printed
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def verification_model(trained_run):
    """(module, spec, in-memory ONNX model with the float verification output) of the tiny conditional run."""
    loaded = load_generator(trained_run())
    module = ImageGenerator(loaded.generator).eval()
    return module, loaded.spec, export_onnx(module, loaded.spec)


def test_degraded_variant_fails_unless_allowed(verification_model, monkeypatch):
    module, spec, model = verification_model
    monkeypatch.setitem(verify.THRESHOLDS, "int8", verify.Thresholds(max_error=1e-9, mean_error=1e-9, fd=1e-9))
    slightly_off = onnx.ModelProto()
    slightly_off.CopyFrom(model)
    weight = next(w for w in slightly_off.graph.initializer if w.data_type == onnx.TensorProto.FLOAT and w.dims)
    values = onnx.numpy_helper.to_array(weight) * 1.01
    weight.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), weight.name))
    with pytest.raises(verify.VerificationError, match="--allow-degraded"):
        verify.verify_parity(slightly_off, module, spec, "int8")
    report = verify.verify_parity(slightly_off, module, spec, "int8", allow_degraded=True)
    assert not report.within_thresholds and report.max_error > 0
    # fp32 has no such escape hatch.
    with pytest.raises(verify.VerificationError):
        verify.verify_parity(slightly_off, module, spec, "fp32", allow_degraded=True)


def test_drop_output_keeps_the_images(verification_model):
    module, spec, model = verification_model
    final = drop_output(model, FLOAT_IMAGES)
    assert [o.name for o in final.graph.output] == ["images"]
    assert [o.name for o in model.graph.output] == ["images", FLOAT_IMAGES]  # the original is untouched
    onnx.checker.check_model(final, full_check=True)
    verify.verify_same_images(final, model, spec)


def test_int8_of_a_conv_transpose_generator_says_it_cannot_help(export, monkeypatch):
    from ganaug.export import card

    run_dir, fp32_path = export("article28")
    _, int8_path = export("article28", "--precision", "int8")
    meta = check_within_documented_error(run_dir, int8_path, "int8")
    assert "ConvTranspose" in meta["ganaug.int8_note"]
    model = onnx.load(str(int8_path))
    float_weights = {init.name for init in model.graph.initializer if init.data_type == onnx.TensorProto.FLOAT}
    conv_transposes = [node for node in model.graph.node if node.op_type == "ConvTranspose"]
    assert conv_transposes and all(node.input[1] in float_weights for node in conv_transposes)  # no int8 kernel
    # The card passes the note on, and recommends fp32 for CPUs when int8 is measured no faster.
    monkeypatch.setattr(card, "measure_speed", lambda paths, batch: {fp32_path: 100.0, int8_path: 90.0})
    built = card.build_card([fp32_path, int8_path], command="test")
    assert built["recommended"]["cpu"] == "fp32"
    assert any("ConvTranspose" in note for note in built["notes"])
    assert any("int8 cannot help here: it ran 0.90x" in note for note in built["notes"])
    assert built["variants"]["int8"]["speed"]["vs_fp32"] == 0.9
