"""`ganaug sample --filter CLASSIFIER.onnx --min-confidence TAU`: the kept set is exactly a brute-force
filter, a subset of the unfiltered set, the same whatever batch size, threads, interruption or
sharding; resumes re-score only what no record holds; a classifier off the contract is refused."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from onnx_models import make_classifier, make_model, reference_probabilities
from PIL import Image
from sampling import kill_once_written, sample, sample_error, tree

import ganaug.sampler.filter as filter_module
import ganaug.sampler.filter as scores_module
from ganaug.contract import format_score
from ganaug.errors import UserError
from ganaug.sampler import ImageFilter, Sampler

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAU = 0.75  # keeps about two images in three of this test classifier's (its scores run from 0.6 to 0.9)
N = 150
BLOCK = 16  # images per score record in these tests (4096 in use): several records per shard


@pytest.fixture(autouse=True)
def small_records(monkeypatch):
    monkeypatch.setattr(scores_module, "RECORD_IMAGES", BLOCK)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("models") / "g.onnx", class_names=["cat", "dog", "fox"])


@pytest.fixture(scope="module")
def classifier(model, tmp_path_factory):
    return make_classifier(tmp_path_factory.mktemp("classifiers") / "c.onnx", scale=0.5, generator=model)


def filtered(model, out, classifier, *args, tau=TAU) -> int:
    return sample(model, out, "--filter", classifier, "--min-confidence", tau, *args)


def records(out) -> list[str]:
    """The score records of a filtered PNG set: files beside the manifest, never a folder."""
    return sorted(name for name in os.listdir(out) if name.startswith(".scores"))


def read_manifest(out) -> list[dict]:
    with open(os.path.join(out, "manifest.csv"), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def brute_force(model, classifier, n=N, tau=TAU):
    """Every image, its label and its probability of that label, computed here; and which to keep."""
    images, labels = Sampler.load(model, provider="cpu").generate(n, seed=0)
    scores = reference_probabilities(classifier, images)[np.arange(n), labels]
    # No score within rounding of TAU: the decisions below cannot hinge on float32 vs float64.
    assert np.abs(scores - tau).min() > 1e-5
    keep = scores >= tau
    assert 0.2 < keep.mean() < 0.9 and all(keep[labels == c].any() for c in range(3))  # a real filter
    return images, labels, scores, keep


def png_pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


# ------------------------------------------------------------------------------ what is kept


def test_the_kept_png_set_is_the_brute_force_filter_and_a_subset_of_the_unfiltered_set(model, classifier, tmp_path):
    images, labels, scores, keep = brute_force(model, classifier)
    out = tmp_path / "out"
    assert filtered(model, out, classifier, "--n", N) == 0
    rows = read_manifest(out)
    assert list(rows[0]) == ["path", "label", "class_name", "index", "seed", "score"]
    assert [int(row["index"]) for row in rows] == np.flatnonzero(keep).tolist()
    for row in rows:
        i = int(row["index"])
        assert int(row["label"]) == labels[i] and row["class_name"] == ["cat", "dog", "fox"][labels[i]]
        assert np.array_equal(png_pixels(out / row["path"]), images[i])
        assert float(row["score"]) == pytest.approx(scores[i], abs=1e-5)
        assert np.float32(row["score"]) >= np.float32(TAU)
    pngs = sorted(name for name in tree(out) if name.endswith(".png"))
    assert pngs == sorted(row["path"] for row in rows)  # kept images only
    # A subset of the unfiltered set: the same files under the same names.
    assert sample(model, tmp_path / "all", "--n", N) == 0
    unfiltered = tree(tmp_path / "all")
    assert all(unfiltered[name] == data for name, data in tree(out).items() if name.endswith(".png"))
    info = json.loads((out / "sample_info.json").read_text())
    assert info["identity"]["filter"] == {"classifier_sha256": ImageFilter.load(
        classifier, Sampler.load(model).meta, TAU).sha256, "min_confidence": TAU, "scheme": filter_module.SCHEME}
    names = ["cat", "dog", "fox"]
    assert info["filter"]["kept"] == {names[c]: int((keep & (labels == c)).sum()) for c in range(3)}
    assert info["filter"]["rejected"] == {names[c]: int((~keep & (labels == c)).sum()) for c in range(3)}
    assert info["filter"]["images_kept"] == int(keep.sum()) and info["images"] == N
    assert info["arguments"]["filter"] == classifier and info["arguments"]["min_confidence"] == TAU
    # Every image's score, kept or rejected, stays recorded: a re-run verifies without scoring.
    recorded = np.concatenate([np.load(out / name) for name in records(out)])
    assert records(out)[0] == ".scores-0-of-1-000000000.npy"
    assert recorded == pytest.approx(scores, abs=1e-5)
    # torchvision's ImageFolder reads the set as it is: every kept image, labelled by its class
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(out))
    assert {os.path.relpath(path, out): label for path, label in folder.samples} == {
        row["path"]: int(row["label"]) for row in read_manifest(out)}


def test_the_kept_npz_set_holds_images_labels_indices_and_scores(model, classifier, tmp_path):
    images, labels, scores, keep = brute_force(model, classifier)
    out = tmp_path / "out"
    assert filtered(model, out, classifier, "--n", N, "--format", "npz", "--shard-size", 40) == 0
    assert sorted(os.listdir(out)) == ["manifest.csv", "sample_info.json"] + [f"shard_{k:05d}.npz" for k in range(4)]
    for k in range(4):
        expected = np.flatnonzero(keep[40 * k : 40 * (k + 1)]) + 40 * k
        with np.load(out / f"shard_{k:05d}.npz") as npz:
            assert npz["indices"].tolist() == expected.tolist()
            assert np.array_equal(npz["images"], images[expected]) and np.array_equal(npz["labels"], labels[expected])
            assert npz["scores"].dtype == np.float32 and npz["scores"] == pytest.approx(scores[expected], abs=1e-5)
    rows = read_manifest(out)
    assert [int(row["index"]) for row in rows] == np.flatnonzero(keep).tolist()
    assert [row["path"] for row in rows] == [f"shard_{i // 40:05d}.npz" for i in np.flatnonzero(keep)]


def test_synthetic_folder_reads_a_filtered_set(model, classifier, tmp_path):
    from ganaug.data.synthetic import SyntheticFolder

    images, labels, _, keep = brute_force(model, classifier)
    for fmt in ("png", "npz"):
        out = tmp_path / fmt
        assert filtered(model, out, classifier, "--n", N, "--format", fmt, "--shard-size", 40) == 0
        folder = SyntheticFolder(out)
        assert len(folder) == int(keep.sum())
        for item, i in enumerate(np.flatnonzero(keep).tolist()):
            image, label = folder[item]
            assert label == labels[i]
            assert np.array_equal((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), images[i])


def test_a_probabilities_output_is_taken_as_it_is(model, classifier, tmp_path):
    softmax = make_classifier(tmp_path / "p.onnx", scale=0.5, generator=model, output="probabilities")
    assert filtered(model, tmp_path / "logits", classifier, "--n", N) == 0
    assert filtered(model, tmp_path / "probabilities", softmax, "--n", N) == 0
    rows = {name: read_manifest(tmp_path / name) for name in ("logits", "probabilities")}
    assert [r["index"] for r in rows["logits"]] == [r["index"] for r in rows["probabilities"]]
    assert [float(r["score"]) for r in rows["logits"]] == pytest.approx(
        [float(r["score"]) for r in rows["probabilities"]], abs=1e-6)


def test_scores_are_compared_in_float32_and_written_to_read_back_exactly():
    assert format_score(np.float32(0.9)) == "0.9" and np.float32("0.99999994") == np.float32(0.99999994)
    for value in np.random.default_rng(0).random(1000, dtype=np.float32).tolist() + [1.1754942e-38, 1.0]:
        text = format_score(np.float32(value))
        assert np.float32(text) == np.float32(value) and len(text) <= 15


@pytest.mark.parametrize("fmt", ["png", "npz"])
def test_files_do_not_depend_on_batch_size_or_threads(model, classifier, tmp_path, fmt):
    reference = None
    for batch_size, threads in ((1, 1), (7, 2), (256, 0)):
        out = tmp_path / f"b{batch_size}"
        assert filtered(model, out, classifier, "--n", N, "--format", fmt, "--batch-size", batch_size,
                        "--threads", threads) == 0
        reference = reference or tree(out)
        assert tree(out) == reference


def test_an_unfiltered_set_keeps_its_format(model, tmp_path):
    """No filter: no score column, no .scores, no filter entry: the files of before, byte for byte."""
    assert sample(model, tmp_path / "out", "--n", 9) == 0
    assert (tmp_path / "out" / "manifest.csv").read_text().splitlines()[0] == "path,label,class_name,index,seed"
    info = json.loads((tmp_path / "out" / "sample_info.json").read_text())
    assert "filter" not in info and "filter" not in info["identity"] and "filter" not in info["arguments"]
    assert not records(tmp_path / "out")


def test_a_class_the_filter_keeps_nothing_of_gets_no_directory_or_an_empty_shard(model, tmp_path, capsys):
    # A classifier that is always sure of class 0: classes 1 and 2 keep nothing.
    sure = make_classifier(tmp_path / "sure.onnx", scale=0.0, generator=model)
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(sure)
    bias = next(t for t in proto.graph.initializer if t.name == "b")
    bias.CopyFrom(numpy_helper.from_array(np.array([20, 0, 0], np.float32), "b"))
    onnx.save(proto, sure)
    assert filtered(model, tmp_path / "out", sure, "--n", 12, tau=0.5) == 0
    assert sorted(os.listdir(tmp_path / "out")) == [".scores-0-of-1-000000000.npy", "cat", "manifest.csv",
                                                    "sample_info.json"]
    err = capsys.readouterr().err
    assert "WARNING the filter kept no image of class 'dog'" in err and "class 'fox'" in err
    assert "wrote 4 images (8 rejected by the filter)" in err
    # In .npz shards, a shard that keeps nothing is an empty shard a reader takes (it once crashed).
    out = tmp_path / "npz"
    assert filtered(model, out, sure, "--n", 8, "--classes", "dog,fox", "--format", "npz", tau=0.5) == 0
    with np.load(out / "shard_00000.npz") as npz:
        assert npz["images"].shape == (0, 8, 8, 1) and npz["labels"].shape == npz["scores"].shape == (0,)
    assert read_manifest(out) == []
    assert sample(model, out, "--filter", sure, "--min-confidence", 0.5, "--n", 8, "--classes", "dog,fox",
                  "--format", "npz") == 0  # the empty shard counts as whole on a re-run


# ------------------------------------------------------------------------------ resume


class Crash(BaseException):
    """Stands in for the process dying."""


def _count_scored(monkeypatch) -> list[int]:
    scored = []
    original = ImageFilter.scores

    def counting(self, images, labels):
        scored.append(len(images))
        return original(self, images, labels)

    monkeypatch.setattr(ImageFilter, "scores", counting)
    return scored


def test_a_resume_scores_only_what_no_record_holds(model, classifier, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    assert filtered(model, reference, classifier, "--n", N) == 0
    out = tmp_path / "out"
    original_write = scores_module.ScoreRecords.write
    written = []

    def crash_on_the_fifth_record(self, shard, block, scores):
        if len(written) == 4:
            raise Crash
        written.append(block)
        original_write(self, shard, block, scores)

    monkeypatch.setattr(scores_module.ScoreRecords, "write", crash_on_the_fifth_record)
    with pytest.raises(Crash):
        filtered(model, out, classifier, "--n", N, "--batch-size", 5)
    monkeypatch.setattr(scores_module.ScoreRecords, "write", original_write)
    assert not (out / "manifest.csv").exists() and len(records(out)) == 4
    scored = _count_scored(monkeypatch)
    assert filtered(model, out, classifier, "--n", N, "--batch-size", 64) == 0
    assert sum(scored) == N - 4 * BLOCK  # the four recorded blocks are not scored again
    assert tree(out) == tree(reference)
    scored.clear()
    (out / "cat" / sorted(os.listdir(out / "cat"))[0]).write_bytes(b"")  # a power cut after "complete"
    assert filtered(model, out, classifier, "--n", N) == 0
    assert scored == [] and tree(out) == tree(reference)  # the file generated again, nothing scored


def test_a_resume_rewrites_a_damaged_npz_file_only(model, classifier, tmp_path, monkeypatch):
    args = ("--n", N, "--format", "npz", "--shard-size", 40)
    assert filtered(model, tmp_path / "reference", classifier, *args) == 0
    out = tmp_path / "out"
    assert filtered(model, out, classifier, *args) == 0
    whole = (out / "shard_00001.npz").read_bytes()
    (out / "shard_00001.npz").write_bytes(whole[: len(whole) // 2])
    (out / "shard_00002.npz").write_bytes((tmp_path / "reference" / "shard_00003.npz").read_bytes())  # another range
    scored = _count_scored(monkeypatch)
    assert filtered(model, out, classifier, *args) == 0
    assert sum(scored) == 80 and tree(out) == tree(tmp_path / "reference")


def test_resume_after_sigkill_is_byte_identical(model, classifier, tmp_path):
    n = 600
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert filtered(model, reference, classifier, "--n", n) == 0
    code = (
        "import sys, time\n"
        "import ganaug.sampler.layout as part, ganaug.sampler.filter as scores\n"
        f"scores.RECORD_IMAGES = {BLOCK}\n"
        "encode = part.encode_png\n"
        "part.encode_png = lambda image: (time.sleep(0.005), encode(image))[1]\n"
        "from ganaug.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, "sample", str(model), "--out", str(out), "--n", str(n), "--filter", classifier,
         "--min-confidence", str(TAU), "--batch-size", "16", "--threads", "1", "--no-progress"],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    kill_once_written(process, out, timeout_s=120)
    assert not (out / "manifest.csv").exists() and records(out)
    assert filtered(model, out, classifier, "--n", n, "--batch-size", 64) == 0
    assert tree(out) == tree(reference)


# ------------------------------------------------------------------------------ shards


@pytest.mark.parametrize("fmt", ["png", "npz"])
def test_shards_equal_one_unsharded_filtered_run(model, classifier, tmp_path, fmt):
    args = ("--n", N, "--format", fmt, "--shard-size", 20)
    assert filtered(model, tmp_path / "reference", classifier, *args) == 0
    out = tmp_path / "out"
    assert filtered(model, out, classifier, *args, "--shard", "2/3") == 0
    assert filtered(model, out, classifier, *args, "--shard", "0/3", "--batch-size", 4) == 0
    assert not (out / "manifest.csv").exists()
    if fmt == "png":  # records of split 3 until the set is finished
        assert {name.split("-")[1] + "-of-3" for name in records(out)} == {"0-of-3", "2-of-3"}
    assert filtered(model, out, classifier, *args, "--shard", "1/3") == 0
    assert tree(out) == tree(tmp_path / "reference")  # images, manifest, sample_info and records


def test_an_unsharded_run_finishes_a_sharded_set_without_scoring_it_again(model, classifier, tmp_path, monkeypatch):
    assert filtered(model, tmp_path / "reference", classifier, "--n", N) == 0
    out = tmp_path / "out"
    assert filtered(model, out, classifier, "--n", N, "--shard", "1/4") == 0
    assert filtered(model, out, classifier, "--n", N, "--shard", "3/4") == 0
    scored = _count_scored(monkeypatch)
    assert filtered(model, out, classifier, "--n", N) == 0
    assert sum(scored) == N - len(range(1, N, 4)) - len(range(3, N, 4))  # shards 0 and 2 only
    assert tree(out) == tree(tmp_path / "reference")
    scored.clear()
    assert filtered(model, out, classifier, "--n", N, "--shard", "2/3") == 0  # a finished set, re-run as a shard
    assert scored == [] and tree(out) == tree(tmp_path / "reference")


# ------------------------------------------------------------------------------ refusals


def test_another_filter_or_none_on_the_same_set_is_refused_by_name(model, classifier, tmp_path, capsys):
    out = tmp_path / "out"
    assert filtered(model, out, classifier, "--n", 12) == 0
    before = tree(out)
    assert filtered(model, out, classifier, "--n", 12, tau=0.8) == 2
    assert "holds samples made with other settings (filter.min_confidence 0.75 there, 0.8 now)" in sample_error(capsys)
    other = make_classifier(tmp_path / "other.onnx", scale=0.5, generator=model, seed=2)
    assert filtered(model, out, other, "--n", 12) == 2
    assert "filter.classifier_sha256 '" in sample_error(capsys)
    assert sample(model, out, "--n", 12) == 2
    error = sample_error(capsys)
    assert "filter {'classifier_sha256'" in error and "there, None now" in error
    assert tree(out) == before
    assert sample(model, out, "--n", 12, "--overwrite") == 0
    assert not records(out)  # --overwrite removed the records too


@pytest.mark.parametrize(("value", "message"), [
    ("0", "--min-confidence must be in (0, 1] (a probability above 0), got 0.0"),
    ("-0.5", "--min-confidence must be in (0, 1]"),
    ("1.5", "--min-confidence must be in (0, 1]"),
])
def test_tau_outside_zero_one_is_refused(model, classifier, tmp_path, capsys, value, message):
    assert sample(model, tmp_path / "out", "--n", 3, "--filter", classifier, "--min-confidence", value) == 2
    assert message in sample_error(capsys)
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses before our code runs
        sample(model, tmp_path / "out", "--n", 3, "--filter", classifier, "--min-confidence", "nan")
    assert exit_info.value.code == 2
    assert "argument --min-confidence: 'nan' is not a finite number" in sample_error(capsys)
    assert not (tmp_path / "out").exists()


def test_the_filter_flags_go_together(model, classifier, tmp_path, capsys):
    assert sample(model, tmp_path / "out", "--n", 3, "--min-confidence", "0.9") == 2
    assert "--min-confidence needs --filter CLASSIFIER.onnx" in sample_error(capsys)
    assert sample(model, tmp_path / "out", "--n", 3, "--filter", classifier) == 2
    assert "--filter needs --min-confidence TAU" in sample_error(capsys)
    assert filtered(model, tmp_path / "out", tmp_path / "nope.onnx", "--n", 3) == 2
    assert f"classifier file {tmp_path / 'nope.onnx'} does not exist" in sample_error(capsys)


@pytest.mark.parametrize(("build", "message"), [
    (dict(num_classes=4), "the classifier has 4 classes but the generator has 3"),
    (dict(shape=(8, 8, 3)), "classifier input 'images' has size 3 on axis 3 but the generator's images are [8, 8, 1]"),
    (dict(input_shape=["N", "H", "W", "C"], shape=(4, 4, 1)),  # sizes not declared: the probe finds out
     "the classifier fails on a batch of 2 uint8 images of [8, 8, 1] (H, W, C): the classifier returned float32 "
     "[8, 3]"),
    (dict(batch=1), "classifier input 'images' has a fixed batch size of 1; the contract is a dynamic N"),
    (dict(output="scores"), "the classifier's output is named 'scores'; name it 'logits'"),
    (dict(metadata={"ganaug.class_names": '["dog", "cat", "fox"]'}),
     "the classifier's class names ['dog', 'cat', 'fox'] are not the generator's ['cat', 'dog', 'fox'] "
     "(same classes in another order?)"),
    (dict(metadata={"ganaug.image_shape": "[16, 16, 1]"}), "the classifier's image shape [16, 16, 1] are not"),
])
def test_a_classifier_off_the_contract_is_refused_in_one_line(model, tmp_path, capsys, build, message):
    path = make_classifier(tmp_path / "c.onnx", **build)
    assert filtered(model, tmp_path / "out", path, "--n", 3) == 2
    assert message in sample_error(capsys)
    assert not (tmp_path / "out").exists()


def test_a_classifier_with_external_data_is_refused_before_onnxruntime_reads_it(model, tmp_path, capsys):
    import onnx
    from onnx import TensorProto
    from onnx.external_data_helper import set_external_data

    path = make_classifier(tmp_path / "c.onnx")
    proto = onnx.load(path)
    weight = next(t for t in proto.graph.initializer if t.name == "W")
    set_external_data(weight, "secret.bin", offset=0, length=len(weight.raw_data))
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    onnx.save(proto, path)
    assert filtered(model, tmp_path / "out", path, "--n", 3) == 2
    assert "tensor 'W' keeps its data in an external file ('secret.bin')" in sample_error(capsys)


def test_nan_or_out_of_range_outputs_are_errors_not_rejections(model, tmp_path):
    meta = Sampler.load(model, provider="cpu").meta
    image_filter = ImageFilter.load(make_classifier(tmp_path / "p.onnx", output="probabilities"), meta, 0.5)
    image_filter._run = lambda images: np.full((len(images), 3), 1.5, np.float32)
    with pytest.raises(UserError, match=r"output 'probabilities' holds values outside \[0, 1\]"):
        image_filter.scores(np.zeros((2, 8, 8, 1), np.uint8), np.zeros(2, np.int64))
    image_filter._run = lambda images: np.full((len(images), 3), np.nan, np.float32)
    with pytest.raises(UserError, match="returned NaN or infinite probabilities for 2 of 2 images"):
        image_filter.scores(np.zeros((2, 8, 8, 1), np.uint8), np.zeros(2, np.int64))
