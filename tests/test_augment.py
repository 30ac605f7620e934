"""`ganaug augment`: the estimate's maths, the decision rule, the kept-not-drawn synthetic count, the
output tree (ImageFolder labels, weights, resume, shards) and its one-line refusals."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from ganaug.augment import output
from ganaug.augment.api import BOTH, CLASSICAL, PSEUDO, SYNTHETIC, _Job
from ganaug.augment.estimate import (
    MEASURABLY_BETTER,
    NOT_WORSE_ON_AVERAGE,
    corrected_difference,
    sentence,
    stratified_folds,
)
from ganaug.augment.settings import AugmentSettings
from ganaug.augment.synthetic import keep_first_per_class
from ganaug.cli import main
from ganaug.errors import UserError
from ganaug.evaluate.policies import POLICIES, build_policy, elastic
from ganaug.evaluate.study import write_labelled_npz
from ganaug.files import sha256_of
from tests.conftest import error_line

# A tiny but real run: 8x8 digits, 2 folds, 10-step classifiers, 4-step GANs.
TINY_GAN = ["data.resolution=8", "model.g_channels=8", "model.d_channels=8", "model.z_dim=8", "model.embed_dim=4",
            "log.progress=false", "log.image_every=0", "train.threads=1"]
TINY_RUN = ["--folds", "2", "--policy", "affine", "--gan-steps", "4", "--classifier-steps", "10", "--teacher-steps", "10",
            "--synthetic-per-class", "3", "--min-confidence", "0.01", "--pseudo-label-confidence", "0.01",
            "--estimate-unlabelled", "40", "--no-progress"]


# ------------------------------------------------------------------------------ the estimate


def test_corrected_interval_is_nadeau_bengio():
    with_ingredient, without = [0.80, 0.90, 0.85, 0.95], [0.78, 0.86, 0.84, 0.90]
    d = corrected_difference("a", "b", with_ingredient, without, held_out_share=0.25)
    points = 100 * (np.array(with_ingredient) - np.array(without))
    half = stats.t.ppf(0.975, 3) * math.sqrt(points.var(ddof=1) * (1 / 4 + 0.25 / 0.75))
    assert d.mean == pytest.approx(points.mean()) and d.folds == 4
    assert (d.low, d.high) == (pytest.approx(points.mean() - half), pytest.approx(points.mean() + half))
    naive = stats.t.ppf(0.975, 3) * points.std(ddof=1) / 2
    assert half > naive  # wider than the plain t-interval that takes folds for independent


def test_the_two_rules_keep_by_the_whole_interval():
    better = corrected_difference("a", "b", [0.9, 0.91, 0.92], [0.8, 0.8, 0.8], 0.2)
    unsure = corrected_difference("a", "b", [0.9, 0.7, 0.95], [0.8, 0.8, 0.8], 0.2)
    worse = corrected_difference("a", "b", [0.7, 0.71, 0.7], [0.8, 0.8, 0.8], 0.2)
    assert unsure.mean > 0 and unsure.low < 0 < unsure.high
    # synthetic images: kept only where the whole interval is above zero
    assert [d.keeps(MEASURABLY_BETTER) for d in (better, unsure, worse)] == [True, False, False]
    assert sentence(unsure, "synthetic images", MEASURABLY_BETTER).endswith("not measurably better; left out.")
    # pseudo-labels: kept where the mean gain is not negative
    lower = corrected_difference("a", "b", [0.7, 0.9, 0.75], [0.8, 0.8, 0.8], 0.2)
    assert lower.mean < 0 < lower.high
    assert [d.keeps(NOT_WORSE_ON_AVERAGE) for d in (better, unsure, lower, worse)] == [True, True, False, False]
    assert sentence(unsure, "pseudo-labels", NOT_WORSE_ON_AVERAGE).endswith("not worse on average; kept.")
    assert sentence(lower, "pseudo-labels", NOT_WORSE_ON_AVERAGE).endswith("worse on average; left out.")
    assert sentence(worse, "pseudo-labels", NOT_WORSE_ON_AVERAGE).endswith("measurably worse; left out.")
    single = corrected_difference("a", "b", [0.9], [0.8], 0.5)
    assert math.isnan(single.low) and not single.keeps(MEASURABLY_BETTER) and single.keeps(NOT_WORSE_ON_AVERAGE)


def test_folds_are_stratified_and_need_enough_images_of_every_class():
    labels = np.repeat(np.arange(3), 4)
    folds = stratified_folds(labels, 4, seed=0)
    assert len(folds) == 4
    for train, held in folds:
        assert sorted(np.bincount(labels[held])) == [1, 1, 1] and not set(train) & set(held)
    assert sorted(np.concatenate([held for _, held in folds])) == list(range(12))
    with pytest.raises(UserError, match="class 0 has 4 labelled images; --folds 5"):
        stratified_folds(labels, 5, seed=0)


def _estimate(per_fold: dict) -> dict:
    return {"per_fold": per_fold, "held_out_share": 0.2, "policy": "affine", "policy_accuracy": {}}


def test_the_decision_keeps_pseudo_labels_unless_they_hurt_and_synthetic_images_only_where_they_help():
    flat, up, unsure = [0.8, 0.8, 0.8], [0.9, 0.91, 0.92], [0.9, 0.7, 0.95]
    # Pseudo-labels help, synthetic images add nothing on top of them: the synthetic images are
    # judged against the pseudo-labels arm (their control), not against the labelled images alone.
    decision = _Job.decide(_estimate({CLASSICAL: flat, PSEUDO: up, SYNTHETIC: up, BOTH: up}))
    assert decision["recipe"] == PSEUDO and decision["pseudo"] and not decision["synthetic"]
    assert decision["differences"]["synthetic"]["worse"] == PSEUDO
    assert decision["differences"]["recipe"]["better"] == PSEUDO
    # Without unlabelled images the synthetic images are judged against classical augmentation.
    decision = _Job.decide(_estimate({CLASSICAL: flat, SYNTHETIC: up}))
    assert decision["recipe"] == SYNTHETIC and decision["differences"]["synthetic"]["worse"] == CLASSICAL
    decision = _Job.decide(_estimate({CLASSICAL: up, SYNTHETIC: flat}))
    assert decision["recipe"] == CLASSICAL and "recipe" not in decision["differences"]
    # pseudo-labels better on average, not measurably: kept; unsure synthetic images: left out
    decision = _Job.decide(_estimate({CLASSICAL: flat, PSEUDO: unsure, SYNTHETIC: unsure, BOTH: unsure}))
    assert decision["recipe"] == PSEUDO and decision["rules"] == {"pseudo": NOT_WORSE_ON_AVERAGE,
                                                                  "synthetic": MEASURABLY_BETTER}
    assert _Job.decide(_estimate({CLASSICAL: up, PSEUDO: flat}))["recipe"] == CLASSICAL
    assert _Job.decide(_estimate({CLASSICAL: flat, PSEUDO: up, SYNTHETIC: flat,
                                  BOTH: [0.95, 0.96, 0.97]}))["recipe"] == BOTH


# ------------------------------------------------------------------------------ classical policies


@pytest.mark.parametrize("name", POLICIES)
def test_policies_keep_shape_and_range_change_the_images_and_follow_the_seed(name):
    images = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    policy = build_policy(name, 16)

    def draw():
        torch.manual_seed(3)  # torchvision's policies draw from the global RNG that train_classifier seeds
        return policy(images, torch.Generator().manual_seed(3))

    first, second = draw(), draw()
    assert first.shape == images.shape and first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, second)
    assert not torch.allclose(first, images)


def test_elastic_without_strength_is_the_identity_and_with_it_moves_pixels():
    images = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    still = elastic(images, torch.Generator().manual_seed(0), alpha=0.0, sigma=2.0)
    assert torch.allclose(still, images, atol=1e-5)
    moved = elastic(images, torch.Generator().manual_seed(0), alpha=8.0, sigma=2.0)
    assert (moved - images).abs().mean() > 0.05


# ------------------------------------------------------------------------------ synthetic images


class _FakeSampler:
    """Image i of class i % 2 is filled with the value i % 256 (so a scorer can tell images apart)."""

    class meta:  # noqa: N801 (the Sampler's attribute name)
        num_classes = 2

    def __init__(self):
        self.generated = []

    def images_for(self, indices, labels, seed=0):
        assert (labels == indices % 2).all()  # image i is of class i % classes
        self.generated += indices.tolist()
        return np.broadcast_to((indices % 256).astype(np.uint8)[:, None, None, None], (len(indices), 2, 2, 1)).copy()


def _every_third(images, labels):
    return (images[:, 0, 0, 0] % 3 == 0).astype(np.float32)


@pytest.mark.parametrize("batch_size", [1, 7, 256])
def test_synthetic_count_is_images_kept_per_class_in_index_order_whatever_the_batch(batch_size):
    kept = keep_first_per_class(_FakeSampler(), _every_third, per_class=4, min_confidence=0.5, seed=0,
                                batch_size=batch_size)
    assert np.bincount(kept.labels).tolist() == [4, 4]
    assert kept.indices.tolist() == [0, 3, 6, 9, 12, 15, 18, 21]  # multiples of 3, first four of each parity
    assert (kept.scores == 1).all() and (kept.images[:, 0, 0, 0] == kept.indices).all()


def test_a_class_the_teacher_never_keeps_is_left_short_after_a_bounded_number_of_its_own_draws(caplog):
    never_odd = lambda images, labels: (labels == 0).astype(np.float32)  # noqa: E731
    sampler = _FakeSampler()
    kept = keep_first_per_class(sampler, never_odd, per_class=2, min_confidence=0.5, seed=0, batch_size=8)
    assert np.bincount(kept.labels, minlength=2).tolist() == [2, 0]
    even = [i for i in sampler.generated if i % 2 == 0]
    assert even == list(range(0, 16, 2))  # the first window only: a full class is not drawn again
    assert len(sampler.generated) - len(even) == 2 * 50 == kept.drawn - len(even)
    assert "fewer than 2 images of class(es) [1] in 100 draws of each" in caplog.text


# ------------------------------------------------------------------------------ output


def test_weights_give_the_synthetic_images_their_share():
    rows = [{"source": "real"}] * 3 + [{"source": "pseudo"}] * 5 + [{"source": "synthetic"}] * 40
    weighted = output.with_weights(rows, 0.25)
    total = sum(float(r["weight"]) for r in weighted)
    synthetic = sum(float(r["weight"]) for r in weighted if r["source"] == "synthetic")
    assert synthetic / total == pytest.approx(0.25, rel=1e-5)
    assert all(r["weight"] == "1" for r in output.with_weights(rows[:8], 0.5))


def test_a_folder_ganaug_did_not_write_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty and was not written by ganaug augment"):
        output.claim(out, output.work_dir_for(out))
    assert (out / "notes.txt").read_text() == "keep me" and not output.work_dir_for(out).exists()


def test_a_damaged_part_manifest_is_one_line(tmp_path):
    part = tmp_path / "pool_part_0_of_1.csv"
    part.write_text("path,label\nx,1\n")
    with pytest.raises(UserError, match="pool_part_0_of_1.csv is unreadable"):
        output.read_rows(part)
    part.write_text(output.csv_text([{c: "" for c in output.COLUMNS} | {"source": "stolen", "label": "1"}]))
    with pytest.raises(UserError, match="did not write"):
        output.read_rows(part)


def test_settings_are_checked_before_any_work():
    with pytest.raises(UserError, match="--synthetic-share"):
        AugmentSettings(labelled="digits", out="x", synthetic_share=1.0)
    with pytest.raises(UserError, match="contradict"):
        AugmentSettings(labelled="digits", out="x", model="g.onnx", synthetic="never")


# ------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def few_labels(tmp_path_factory):
    """5 labelled digits per class (8x8) and 60 unlabelled ones."""
    from ganaug.config import DataConfig
    from ganaug.data import load_dataset

    folder = tmp_path_factory.mktemp("few")
    data = load_dataset(DataConfig(source="digits", resolution=8, in_memory=True))
    index = torch.cat([torch.nonzero(data.labels == c).flatten()[:5] for c in range(10)])
    write_labelled_npz(folder / "labelled.npz", data.images[index], data.labels[index], data.class_names)
    np.savez(folder / "unlabelled.npz", images=data.images[200:260].permute(0, 2, 3, 1).numpy())
    return folder


def _augment(few_labels: Path, out: Path, *extra: str) -> int:
    return main(["augment", "--labelled", str(few_labels / "labelled.npz"), "--out", str(out), *TINY_RUN,
                 *extra, *TINY_GAN])


def _image_folder_agrees_with_manifest(out: Path) -> list[dict]:
    from torchvision.datasets import ImageFolder

    rows = list(csv.DictReader(open(out / "manifest.csv", encoding="utf-8")))
    folder = ImageFolder(str(out))
    labels = {str(Path(path).relative_to(out)): label for path, label in folder.samples}
    assert labels == {row["path"]: int(row["label"]) for row in rows}  # every file listed, ImageFolder's index == label
    return rows


@pytest.fixture(scope="module")
def two_jobs(few_labels, tmp_path_factory):
    """A whole run, its estimate's units in two worker processes: the output and what it printed."""
    out, printed = tmp_path_factory.mktemp("two_jobs") / "set", io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert _augment(few_labels, out, "--unlabelled", str(few_labels / "unlabelled.npz"), "--jobs", "2") == 0
    return out, printed.getvalue()


def test_augment_writes_an_image_folder_a_teacher_and_a_report_and_resumes(few_labels, two_jobs, capsys):
    out, printed = two_jobs
    rows = _image_folder_agrees_with_manifest(out)
    report = json.loads((out / "report.json").read_text())
    assert report["estimate"]["folds"] == 2 and set(report["estimate"]["accuracy_per_fold"]) == {
        CLASSICAL, PSEUDO, SYNTHETIC, BOTH}
    assert sum(r["source"] == "real" for r in rows) == 50
    assert report["output"]["images"] == {s: sum(r["source"] == s for r in rows) for s in {r["source"] for r in rows}}
    assert (out / "teacher.onnx").is_file() and "## The estimate" in (out / "report.md").read_text()
    assert printed.strip().endswith("(manifest.csv, teacher.onnx, report.md)")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert _augment(few_labels, out, "--unlabelled", str(few_labels / "unlabelled.npz")) == 0  # a finished run
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before
    # other settings on the same --out: refused in one line, nothing changed
    assert _augment(few_labels, out, "--unlabelled", str(few_labels / "unlabelled.npz"), "--seed", "1") == 2
    assert "other settings" in error_line(capsys.readouterr().err, "augment")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before


def _estimate_files(out: Path) -> tuple[dict, dict]:
    """The estimate's accuracies in the state, and the classifiers its units handed on."""
    work = out.parent / f"{out.name}.work"
    units = json.loads((work / "state.json").read_text())["units"]
    classifiers = {str(p.relative_to(work)): torch.load(p, weights_only=True) for p in work.rglob("folds/*/*.pt")}
    return {k: v for k, v in units.items() if k.startswith(("policy/", "arm/"))}, classifiers


def test_the_estimate_is_the_same_for_any_number_of_jobs(few_labels, two_jobs, tmp_path):
    """--jobs 2 trained the estimate's units in two worker processes, --jobs 1 trains them in this
    one: one thread per unit either way, so the same weights, accuracies and output."""
    one = tmp_path / "one"
    assert _augment(few_labels, one, "--unlabelled", str(few_labels / "unlabelled.npz"), "--jobs", "1") == 0
    (accuracies, classifiers), (accuracies_2, classifiers_2) = map(_estimate_files, (one, two_jobs[0]))
    assert len(accuracies) == 2 * 4 and accuracies == accuracies_2  # 2 folds x (affine, 3 ingredient arms)
    assert sorted(classifiers) == sorted(classifiers_2) == sorted(
        f"folds/fold{f}/{name}-seed0.pt" for f in (0, 1) for name in ("classical-affine", "fixmatch"))
    for name, weights in classifiers.items():
        assert all(torch.equal(weights[k], classifiers_2[name][k]) for k in weights), name
    assert (one / "report.json").read_text() == (two_jobs[0] / "report.json").read_text()


def _forced(decision: dict):
    """_Job.decide returning a fixed decision: the output stage under each recipe, whatever a tiny
    estimate says."""
    def decide(estimate):
        return {"recipe": decision["recipe"], "pseudo": decision["pseudo"], "synthetic": decision["synthetic"],
                "rules": {}, "differences": {}}
    return staticmethod(decide)


def _no_estimate(job):
    """What the estimate returns, without its folds: for tests of the output stage under a forced
    decision (the estimate itself is tested end to end above)."""
    return {"policy": "affine", "policy_accuracy": {"affine": 0.5}, "folds": 2, "per_fold": {}, "held_out_share": 0.5}


def test_shards_of_the_unlabelled_pool_together_equal_one_run(few_labels, tmp_path, monkeypatch):
    monkeypatch.setattr(_Job, "decide", _forced({"recipe": BOTH, "pseudo": True, "synthetic": True}))
    monkeypatch.setattr(_Job, "estimate", _no_estimate)
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    args = ("--unlabelled", str(few_labels / "unlabelled.npz"))
    assert _augment(few_labels, whole, *args) == 0
    assert _augment(few_labels, sharded, *args, "--shard", "1/2") == 0
    assert not (sharded / "manifest.csv").exists()  # shard 0 has not run
    assert _augment(few_labels, sharded, *args, "--shard", "0/2") == 0
    rows = _image_folder_agrees_with_manifest(whole)
    assert {"real", "synthetic", "pseudo"} <= {r["source"] for r in rows}
    # Byte for byte, but for the generator's sha256: each --out trains its own generator, whose ONNX
    # metadata names its checkpoint (itself naming the run's data file), so the two files differ.
    def without_generator(out: Path) -> str:
        return re.sub(r"generator:[0-9a-f]{64}", "generator", (out / "manifest.csv").read_text())

    assert without_generator(whole) == without_generator(sharded)
    for row in rows:
        assert (whole / row["path"]).read_bytes() == (sharded / row["path"]).read_bytes()
    synthetic = [r for r in rows if r["source"] == "synthetic"]
    assert len(synthetic) == 3 * 10  # --synthetic-per-class counts images kept
    assert all(r["model"].startswith("generator:") and float(r["confidence"]) >= 0.01 for r in synthetic)
    share = sum(float(r["weight"]) for r in synthetic) / sum(float(r["weight"]) for r in rows)
    assert share == pytest.approx(0.5, rel=1e-4)
    pseudo = [r for r in rows if r["source"] == "pseudo"]
    assert pseudo and all(r["model"].startswith("teacher:") for r in pseudo)
    teacher = f"teacher:{sha256_of(whole / 'teacher.onnx')}"  # the FixMatch teacher labelled and filtered
    assert all(r["model"] == teacher for r in pseudo) and not (whole / "synthetic_teacher.onnx").exists()
    assert json.loads((whole / "report.json").read_text())["output"]["teacher"] == "fixmatch"


def test_the_teacher_is_a_filter_the_sampler_takes(few_labels, tmp_path, monkeypatch, trained_run):
    """teacher.onnx keeps the classifier contract: `ganaug sample --filter` accepts it for a
    generator of the same classes and image shape."""
    from ganaug.export import export_model
    from ganaug.sampler import ImageFilter, Sampler

    monkeypatch.setattr(_Job, "decide", _forced({"recipe": CLASSICAL, "pseudo": False, "synthetic": False}))
    monkeypatch.setattr(_Job, "estimate", _no_estimate)
    out = tmp_path / "set"
    assert _augment(few_labels, out, "--synthetic", "never") == 0
    run = trained_run("data.resolution=8", "model.z_dim=8")
    generator = export_model(run, tmp_path / "g.onnx").path
    image_filter = ImageFilter.load(out / "teacher.onnx", Sampler.load(generator).meta, 0.9)
    images = np.zeros((2, 8, 8, 1), np.uint8)
    assert image_filter.probabilities(images).sum(axis=1) == pytest.approx([1, 1])


@pytest.mark.parametrize(("extra", "message"), [
    (("--labelled", "nowhere.npz"), "--labelled: nowhere.npz does not exist"),
    (("--folds", "6"), "--folds 6 holds one out per fold"),
    (("--model", "missing.onnx"), "missing.onnx"),
    (("--shard", "2/2"), "--shard"),
    (("--synthetic-share", "1.5"), "--synthetic-share"),
])
def test_augment_mistakes_are_one_line(few_labels, tmp_path, capsys, extra, message):
    args = ["augment", "--labelled", str(few_labels / "labelled.npz"), "--out", str(tmp_path / "o"), *TINY_RUN,
            *extra, *TINY_GAN]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own check of the value: still one line (cli._Parser)
        code = exc.code
    assert code == 2
    assert message in error_line(capsys.readouterr().err, "augment")


def test_an_unlabelled_labelled_source_is_refused(tmp_path, capsys):
    np.savez(tmp_path / "flat.npz", images=np.zeros((20, 8, 8), np.uint8))
    assert main(["augment", "--labelled", str(tmp_path / "flat.npz"), "--out", str(tmp_path / "o"), *TINY_RUN,
                 *TINY_GAN]) == 2
    assert "has no labels" in error_line(capsys.readouterr().err, "augment")


# ------------------------------------------------------------------------------ the FixMatch bar


def _two_blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: a bright left half; class 1: a bright right half (8x8, noisy)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.randint(0, 60, (n, 1, 8, 8), generator=generator)
    images[labels == 0, :, :, :4] += 180
    images[labels == 1, :, :, 4:] += 180
    return images.clamp(0, 255).to(torch.uint8), labels


def test_fixmatch_learns_from_two_labels_and_unlabelled_images_and_follows_the_seed():
    from ganaug.evaluate.classifier import TrainingSet, TrainSettings, accuracy, train_fixmatch

    labelled, labels = _two_blobs(2, seed=0)
    pool, _ = _two_blobs(64, seed=1)
    test, test_labels = _two_blobs(100, seed=2)
    settings = TrainSettings(steps=30, batch_size=8, widths=(8, 8))
    first = train_fixmatch(TrainingSet(labelled, labels), pool, 2, settings, seed=0)
    again = train_fixmatch(TrainingSet(labelled, labels), pool, 2, settings, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True))
    assert accuracy(first, test, test_labels) > 0.9


def test_folds_default_to_five_or_the_rarest_class_count(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "l.npz", images=rng.integers(0, 256, (9, 8, 8), dtype=np.uint8), labels=np.repeat(np.arange(3), 3))
    assert main(["augment", "--labelled", str(tmp_path / "l.npz"), "--out", str(tmp_path / "o"), "--synthetic", "never",
                 "--policy", "affine", "--classifier-steps", "4", "--no-progress", "data.resolution=8"]) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["estimate"]["folds"] == 3 and len(report["estimate"]["accuracy_per_fold"][CLASSICAL]) == 3


@pytest.mark.parametrize(("state", "message"), [
    ("[" * 10_000 + "]" * 10_000, "nested"),
    ('{"format": 1, "settings": {}, "units": {"policy/affine/fold0/seed0": "high"}}', "is not an accuracy"),
    ('{"format": 1, "settings": {}, "units": {"prepared": {"decision": "keep everything"}}}', "not one augment wrote"),
])
def test_a_tampered_state_is_refused_in_one_line(tmp_path, capsys, state, message):
    """The work directory's state is read back like input: it cannot steer what is loaded or crash."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "l.npz", images=rng.integers(0, 256, (6, 8, 8), dtype=np.uint8), labels=np.repeat([0, 1], 3))
    (tmp_path / "o.work").mkdir()
    (tmp_path / "o.work" / "state.json").write_text(state)
    assert main(["augment", "--labelled", str(tmp_path / "l.npz"), "--out", str(tmp_path / "o"), "--synthetic",
                 "never", "--no-progress", "data.resolution=8"]) == 2
    line = error_line(capsys.readouterr().err, "augment")
    assert "is not a ganaug augment state" in line and message in line


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("gan_processes", ["1", "2"], ids=["gan-in-worker", "gan-under-torchrun"])
def test_sigterm_stops_the_workers_saves_the_gans_and_exits_143(few_labels, tmp_path, gan_processes):
    """A cluster's preemption: augment stops its worker processes (each GAN saves first, also where
    a worker waits on torchrun's processes), leaves none behind, says so in one line and exits
    128 + SIGTERM, not 0 and not Ctrl-C's 130."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    out = tmp_path / "set"
    run = [a if a != "4" else "100000" for a in TINY_RUN]  # GANs that would train for a long time
    command = [sys.executable, "-m", "ganaug", "augment", "--labelled", str(few_labels / "labelled.npz"),
               "--unlabelled", str(few_labels / "unlabelled.npz"), "--out", str(out), "--jobs", "2",
               "--gan-processes", gan_processes, *run, *TINY_GAN]
    process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    work = Path(f"{out}.work")
    deadline = time.monotonic() + 150
    while len(list(work.glob("**/config.yaml"))) < 2:  # both folds' GANs write their config, then train
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.2)
    time.sleep(2 if gan_processes == "1" else 8)  # under torchrun: until both ranks train
    workers = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "ganaug augment: stopped by SIGTERM"
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
    assert len(list(work.glob("**/checkpoints/last.pt"))) == 2  # each GAN saved where it stood
    assert not (out / "manifest.csv").exists()  # no set that looks finished


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_gan_processes_train_each_generator_under_torchrun(few_labels, tmp_path):
    """--gan-processes 2: each fold's generator trains under ganaug's torchrun launcher with two DDP
    processes, to its last step, and is exported for the estimate."""
    out = tmp_path / "set"
    assert _augment(few_labels, out, "--unlabelled", str(few_labels / "unlabelled.npz"), "--jobs", "1",
                    "--gan-processes", "2") == 0
    work = tmp_path / "set.work" / "folds"
    for fold in (0, 1):
        log = (work / f"fold{fold}" / "run.log").read_text()
        assert "world size 2" in log and "step 4/4" in log, log[-2000:]
        assert (work / f"fold{fold}" / "generator.onnx").is_file()
    assert json.loads((out / "report.json").read_text())["settings"]["gan_processes"] == 2


def test_a_generator_failing_under_torchrun_is_one_line_naming_its_log(few_labels, tmp_path, monkeypatch, capsys):
    """The trainer's own error line, from the launcher's output, becomes augment's one line."""
    import sys

    from ganaug.augment import children

    say = "import sys; print('noise'); print('ganaug train: error: data.source: boom', file=sys.stderr); sys.exit(2)"
    monkeypatch.setattr(children, "torchrun_command", lambda *args: [sys.executable, "-c", say])
    out = tmp_path / "set"
    assert _augment(few_labels, out, "--unlabelled", str(few_labels / "unlabelled.npz"), "--jobs", "1",
                    "--gan-processes", "2") == 2
    log = tmp_path / "set.work" / "folds" / "fold0" / "run.log"
    assert error_line(capsys.readouterr().err, "augment") == (
        f"ganaug augment: error: training a generator under torchrun failed: data.source: boom (log: {log})")


def test_augment_works_at_the_labelled_images_own_side_unless_told_otherwise(tmp_path, caplog):
    """data.resolution: the labelled images' side where a generator can have it; a config file or an
    override still wins, a --model's side rules, and images of several sizes keep the default, with a
    warning that says so."""
    from ganaug.augment.settings import gan_config_for

    np.savez(tmp_path / "l28.npz", images=np.zeros((4, 28, 28), np.uint8), labels=np.arange(4) % 2)
    np.savez(tmp_path / "l30.npz", images=np.zeros((4, 30, 30), np.uint8), labels=np.arange(4) % 2)
    (tmp_path / "mixed" / "a").mkdir(parents=True)
    for i, size in enumerate(((40, 40), (48, 40))):
        Image.new("L", size).save(tmp_path / "mixed" / "a" / f"{i}.png")
    (tmp_path / "gan.yaml").write_text("data:\n  resolution: 32\n")
    l28, l30 = str(tmp_path / "l28.npz"), str(tmp_path / "l30.npz")

    def side(labelled, model=None, config=None, overrides=()):
        return gan_config_for(labelled, model, config, list(overrides)).data.resolution

    with caplog.at_level("INFO", logger="ganaug.augment.settings"):
        assert side(l28) == 28 and "data.resolution=28: the labelled images' own side" in caplog.text
        assert side("mnist5k") == 28 and side("cifar10") == 32
        assert side(l28, overrides=["data.resolution=16"]) == 16
        assert side(l28, config=str(tmp_path / "gan.yaml")) == 32
        assert side(l28, model="g.onnx") == 16  # augment takes the model's side from the model
        caplog.clear()
        assert side(l30) == 16 and "are 30x30, a side no generator has" in caplog.text
        caplog.clear()
        assert side(str(tmp_path / "mixed")) == 16 and "not all square and of one size" in caplog.text
        caplog.clear()
        assert side(str(tmp_path / "missing.npz")) == 16 and not caplog.text  # the loader says what is wrong


def test_a_28_pixel_labelled_set_gives_a_28_pixel_training_set(few_labels, tmp_path):
    """End to end, without data.resolution: augment's folder holds the labelled images at their own side."""
    labelled = np.load(few_labels / "labelled.npz")
    images = np.repeat(np.repeat(labelled["images"], 4, axis=1), 4, axis=2)[:, 2:30, 2:30]  # 8x8 -> 28x28
    np.savez(tmp_path / "l28.npz", images=images, labels=labelled["labels"], class_names=labelled["class_names"])
    out = tmp_path / "set"
    tiny = [a for a in TINY_GAN if not a.startswith("data.resolution")]
    assert main(["augment", "--labelled", str(tmp_path / "l28.npz"), "--out", str(out), *TINY_RUN,
                 "--synthetic", "never", *tiny]) == 0
    sizes = {Image.open(path).size for path in out.rglob("*.png")}
    assert sizes == {(28, 28)}


def _recording_trainers(monkeypatch, trained: dict) -> None:
    """recipes' two trainers replaced by ones that record their budget and device, and return a model."""
    from ganaug.augment import recipes as module
    from ganaug.evaluate.classifier import SmallCNN

    def record(name, budget, device):
        trained[name] = (budget.steps, device)
        return SmallCNN(1, 2)

    monkeypatch.setattr(module, "train_fixmatch", lambda data, pool, classes, budget, seed, device=None: record(
        "teacher", budget, device))
    monkeypatch.setattr(module, "train_classifier", lambda data, classes, budget, device=None, **kwargs: record(
        "classifier", budget, device))


@pytest.mark.parametrize("labelled", [50, 2000])
def test_the_teachers_train_for_teacher_steps_and_the_classifiers_for_classifier_steps(monkeypatch, labelled):
    """Both budgets keep the floor of --classifier-min-epochs passes over the labelled images (60
    passes over 2,000 images at 64 a batch: 1,875 steps)."""
    from ganaug.augment.recipes import Recipes
    from ganaug.config import Config

    trained = {}
    _recording_trainers(monkeypatch, trained)
    settings = AugmentSettings(labelled="digits", out="x", classifier_steps=300, teacher_steps=900)
    recipes = Recipes(settings, Config(), ("a", "b"), 1, None)
    images, labels = torch.zeros(labelled, 1, 8, 8, dtype=torch.uint8), torch.arange(labelled) % 2
    recipes.fixmatch(images, labels, images, seed=0)
    recipes.train(images, labels, labelled, seed=0, policy="affine")
    floor = math.ceil(60 * labelled / 64)
    assert {name: steps for name, (steps, _) in trained.items()} == {"teacher": max(900, floor),
                                                                     "classifier": max(300, floor)}


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu-only", "gpu"])
def test_classifiers_train_on_the_gpu_torch_sees_and_come_back_on_the_cpu(monkeypatch, gpu):
    """Where torch sees a GPU the teachers and classifiers train there, with cuDNN's deterministic
    kernels; either way they come back on the CPU, where augment saves, exports and pseudo-labels.
    (This machine has no GPU: the trainers are stand-ins; scripts/gpu_check.sh runs augment on one.)"""
    from ganaug.augment.recipes import Recipes
    from ganaug.config import Config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    trained = {}
    _recording_trainers(monkeypatch, trained)
    recipes = Recipes(AugmentSettings(labelled="digits", out="x"), Config(), ("a", "b"), 1, None)
    images, labels = torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.arange(4) % 2
    models = [recipes.fixmatch(images, labels, images, seed=0), recipes.train(images, labels, 4, 0, "affine")]
    expected = torch.device("cuda" if gpu else "cpu")
    assert {name: device for name, (_, device) in trained.items()} == {"teacher": expected, "classifier": expected}
    assert all(p.device.type == "cpu" for model in models for p in model.parameters())
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == ((True, False) if gpu else
                                                                                     (False, True))


def test_a_unit_out_of_gpu_memory_ends_augment_in_one_line_and_keeps_the_finished_units(few_labels, tmp_path,
                                                                                       monkeypatch, capsys):
    """torch's GPU out-of-memory error, raised by an estimate unit (in this process with --jobs 1; a
    worker's arrives pickled, as the same class), is one line that says what to lower, and the units
    finished before it stay for the rerun."""
    import pickle

    from ganaug.augment.folds import FoldData

    message = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB of "
               "which 1.06 GiB is free.\nOf the allocated memory 75.0 GiB is allocated by PyTorch")
    assert type(pickle.loads(pickle.dumps(torch.OutOfMemoryError(message)))) is torch.OutOfMemoryError
    perform = FoldData.perform

    def sixth_unit_out_of_memory(self, unit):
        if sixth_unit_out_of_memory.calls == 5:
            raise torch.OutOfMemoryError(message)
        sixth_unit_out_of_memory.calls += 1
        return perform(self, unit)

    sixth_unit_out_of_memory.calls = 0
    monkeypatch.setattr(FoldData, "perform", sixth_unit_out_of_memory)
    out = tmp_path / "set"
    assert _augment(few_labels, out, "--unlabelled", str(few_labels / "unlabelled.npz"), "--jobs", "1") == 2
    err = capsys.readouterr().err
    assert error_line(err, "augment") == (
        "ganaug augment: error: out of GPU memory (it asked for 2.00 GiB more): use fewer --jobs (each worker "
        "holds its own copy of the images and, on a GPU, its own CUDA context) or a smaller --estimate-unlabelled "
        "or --synthetic-per-class")
    assert "Traceback" not in err
    # The five units made before it (longest kinds first: 2 generators, 2 teachers, 1 classifier) are kept.
    work = tmp_path / "set.work"
    units = json.loads((work / "state.json").read_text())["units"]
    assert [key for key in units if key.startswith(("policy/", "arm/"))] == ["policy/affine/fold0/seed0"]
    assert sorted(str(p.relative_to(work)) for p in work.glob("folds/*/*") if p.suffix in (".onnx", ".pt")) == [
        "folds/fold0/classical-affine-seed0.pt", "folds/fold0/fixmatch-seed0.pt", "folds/fold0/generator.onnx",
        "folds/fold1/fixmatch-seed0.pt", "folds/fold1/generator.onnx"]


def test_the_commands_defaults_are_the_settings_defaults():
    """The CLI spells its defaults out (it does not import augment to start); they must be the library's."""
    import dataclasses

    from ganaug.cli import build_parser

    args = build_parser().parse_args(["augment", "--labelled", "l.npz", "--out", "o"])
    flags = {"classifier_steps": args.classifier_steps, "teacher_steps": args.teacher_steps,
             "gan_steps": args.gan_steps, "gan_processes": args.gan_processes,
             "synthetic_per_class": args.synthetic_per_class, "synthetic_share": args.synthetic_share, "filter_confidence": args.min_confidence,
             "pseudo_label_confidence": args.pseudo_label_confidence,
             "estimate_unlabelled": args.estimate_unlabelled, "seeds": args.seeds, "policy": args.policy,
             "synthetic": args.synthetic, "seed": args.seed, "jobs": args.jobs}
    defaults = {field.name: field.default for field in dataclasses.fields(AugmentSettings)}
    assert flags == {name: defaults[name] for name in flags}
