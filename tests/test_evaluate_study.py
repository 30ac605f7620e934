"""The augmentation study: what the GAN may see, a tiny end-to-end study, resuming, the reports."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY
from onnx_models import make_model

from ganaug.cli import main
from ganaug.errors import UserError
from ganaug.evaluate import classifier as study_classifier
from ganaug.evaluate import features, policies, study
from ganaug.evaluate.classifier import TrainingSet, TrainSettings
from ganaug.evaluate.report import mean_interval, verdict
from ganaug.evaluate.study import (
    ALL,
    ARMS,
    Study,
    StudySettings,
    image_hashes,
    read_synthetic,
    resolve_gan_config,
)
from ganaug.sampler import Sampler

# --classifier-min-epochs 0: 15 steps exactly, a teacher too weak to pass a 4-step GAN's images
TINY_STUDY = ["--k", "5", "--seeds", "2", "--gan-steps", "4", "--classifier-steps", "15", "--classifier-min-epochs", "0",
              "--synthetic-per-class", "12", *TINY]


def settings(ks=(5, 20), **changes) -> StudySettings:
    """A tiny study; unfiltered unless a test asks (a 4-step GAN's images rarely pass a 0.9 filter)."""
    cfg = resolve_gan_config(None, TINY)
    return StudySettings(ks=list(ks), seeds=1, gan_steps=4, gan_config=cfg.to_dict(),
                         **({"filter_confidence": 0.0} | changes))


# ------------------------------------------------------------------------------ the protocol


def test_the_gan_data_is_exactly_k_labelled_training_images_per_class_and_no_test_image(tmp_path):
    s = Study(tmp_path, settings())
    test_hashes = image_hashes(s.test_images)
    train_hashes = image_hashes(s.data.images[s.train_index])
    assert len(test_hashes) == len(s.test_index) and not test_hashes & train_hashes  # a clean split
    for k in (5, 20):
        with np.load(s.subset_npz(k), allow_pickle=False) as npz:
            images, labels, names = npz["images"], npz["labels"], npz["class_names"].tolist()
        assert names == s.class_names
        assert np.bincount(labels, minlength=10).tolist() == [k] * 10
        hashes = image_hashes(torch.from_numpy(images).permute(0, 3, 1, 2))
        assert len(hashes) == 10 * k
        assert hashes <= train_hashes and not hashes & test_hashes
        # Each image keeps its own label: the npz pairs match the real data's pairs.
        by_hash = {h: int(y) for h, y in zip(
            [next(iter(image_hashes(x[None]))) for x in s.data.images], s.data.labels, strict=True)}
        for image, label in zip(torch.from_numpy(images).permute(0, 3, 1, 2), labels, strict=True):
            assert by_hash[next(iter(image_hashes(image[None])))] == label


def test_the_split_is_stratified_and_seeded(tmp_path):
    a, b = Study(tmp_path / "a", settings()), Study(tmp_path / "b", settings())
    assert torch.equal(a.test_index, b.test_index)
    counts = torch.bincount(a.data.labels[a.test_index]).float() / torch.bincount(a.data.labels).float()
    assert torch.allclose(counts, torch.full((10,), 0.3), atol=0.01)
    c = Study(tmp_path / "c", settings(split_seed=1))
    assert not torch.equal(a.test_index, c.test_index)
    assert torch.equal(a.subset(5), a.subset(5)) and len(a.subset(None)) == len(a.train_index)


def test_other_settings_in_the_same_out_dir_are_refused(tmp_path):
    Study(tmp_path, settings()).state.record("gan/k5", {"steps": 4})
    Study(tmp_path, settings(ks=(5, 10, 20)))  # more K values or seeds: the same study, more units
    with pytest.raises(UserError, match="other settings.*synthetic_fraction"):
        Study(tmp_path, settings(synthetic_fraction=0.25))


def test_settings_of_the_unlabelled_arms_matter_only_with_them(tmp_path):
    Study(tmp_path / "labelled", settings(semi_gan="unconditional")).state.record("gan/k5", {"steps": 4})
    Study(tmp_path / "labelled", settings(semi_gan="pseudo"))  # no unlabelled arms: the same study
    state = json.loads((tmp_path / "labelled" / "state.json").read_text())
    state["settings"]["semi_gan"] = "unconditional"  # as a study of the previous version recorded it
    (tmp_path / "labelled" / "state.json").write_text(json.dumps(state))
    Study(tmp_path / "labelled", settings(semi_gan="pseudo"))
    Study(tmp_path / "semi", settings(unlabelled=True, semi_gan="unconditional")).state.record("gan/k5", {"steps": 4})
    with pytest.raises(UserError, match=r"other settings \(semi_gan\)"):
        Study(tmp_path / "semi", settings(unlabelled=True, semi_gan="pseudo"))


def test_every_arm_of_a_k_trains_as_long_and_large_k_trains_longer(tmp_path):
    s = Study(tmp_path, settings(ks=(5, ALL)))
    assert s.classifier_budget(5).steps == 400  # 60 passes over 50 images take fewer steps than the floor
    n_all = len(s.subset(ALL))
    assert s.classifier_budget(ALL).steps == math.ceil(60 * n_all / 64) > 400
    assert TrainSettings(min_epochs=0).budget(10**6).steps == 400


def test_a_study_state_without_a_setting_of_today_is_other_settings(tmp_path):
    """No upgrade paths for files of unreleased versions: a state written before the epoch floor
    existed is a study with other settings, refused by name."""
    Study(tmp_path, settings()).state.record("gan/k5", {"steps": 4})
    state = json.loads((tmp_path / "state.json").read_text())
    del state["settings"]["classifier_min_epochs"]
    (tmp_path / "state.json").write_text(json.dumps(state))
    with pytest.raises(UserError, match=r"other settings \(classifier_min_epochs\)"):
        Study(tmp_path, settings())


@pytest.mark.parametrize("earlier, protocol", [
    ({"protocol": 3}, "3"),  # the semi GAN saw only the unlabelled images the teacher could not label
    ({"filter_path": "ganaug sample --filter"}, "unknown"),  # protocols 1 and 2 wrote no mark
    ({}, "unknown"),
])
def test_a_study_of_an_earlier_protocol_is_not_resumed(tmp_path, earlier, protocol):
    Study(tmp_path, settings(filter_confidence=0.9)).state.record("gan/k5", {"steps": 4})
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["settings"]["protocol"] == study.PROTOCOL
    del state["settings"]["protocol"]
    state["settings"].update(earlier)  # as a study of an earlier version recorded it
    (tmp_path / "state.json").write_text(json.dumps(state))
    with pytest.raises(UserError, match=rf"study of protocol {protocol}.*, whose arms mean other things"):
        Study(tmp_path, settings(filter_confidence=0.9))


def test_classical_augmentation_warps_the_real_images_of_a_mixed_batch_unless_asked():
    real, synthetic = torch.zeros(8, 1, 4, 4, dtype=torch.uint8), torch.full((8, 1, 4, 4), 255, dtype=torch.uint8)
    labels = torch.zeros(8, dtype=torch.int64)
    mixed = TrainingSet(real, labels, synthetic, labels, synthetic_fraction=0.25)
    images, _, warped = mixed.batch(16, torch.Generator().manual_seed(0))
    assert warped == 12 and (images[:12] == 0).all() and (images[12:] == 255).all()  # real rows first
    both = TrainingSet(real, labels, synthetic, labels, synthetic_fraction=0.25, warp_synthetic=True)
    assert both.batch(16, torch.Generator().manual_seed(0))[2] == 16
    assert TrainingSet(real, labels).batch(16, torch.Generator().manual_seed(0))[2] == 16


def test_the_mixed_arms_leave_the_synthetic_images_unwarped(tmp_path, monkeypatch):
    """What train_classifier warps: the real rows of each batch (the border-padded warp moves ink),
    the synthetic rows exactly as the sampler drew them."""
    seen = []
    original = policies.random_affine
    monkeypatch.setattr(policies, "random_affine", lambda x, g: seen.append(len(x)) or original(x, g))
    real = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(20) % 2
    data = TrainingSet(real, labels, real.flip(3), labels, synthetic_fraction=0.5)
    study_classifier.train_classifier(data, 2, TrainSettings(steps=3, batch_size=10), seed=0, augment=True)
    assert seen == [5, 5, 5]
    data.warp_synthetic, seen[:] = True, []
    study_classifier.train_classifier(data, 2, TrainSettings(steps=3, batch_size=10), seed=0, augment=True)
    assert seen == [10, 10, 10]


def test_mean_and_95_percent_t_interval():
    summary = mean_interval([0.80, 0.82, 0.84])
    assert summary["mean"] == pytest.approx(0.82)
    assert summary["half_width"] == pytest.approx(4.302653 * 0.02 / 3 ** 0.5, rel=1e-5)  # t(0.975, 2)
    assert np.isnan(mean_interval([0.9])["half_width"])


def test_verdicts_are_read_off_the_paired_interval():
    assert verdict(mean_interval([0.010, 0.020, 0.015])) == "gain"
    assert verdict(mean_interval([-0.010, -0.020, -0.015])) == "loss"
    assert verdict(mean_interval([-0.010, 0.020, 0.000])) == "no measurable difference"
    # Two seeds that happen to differ by the same amount give a zero-width interval: no verdict.
    assert "too few" in verdict(mean_interval([0.004, 0.004]))


# ------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """`ganaug evaluate study` with a tiny GAN, K=5, two seeds: train, export, sample, classify."""
    out = tmp_path_factory.mktemp("study")
    steps = features.FEATURE_NET_STEPS
    features.FEATURE_NET_STEPS = 30
    try:
        assert main(["evaluate", "study", "--out", str(out), *TINY_STUDY]) == 0
    finally:
        features.FEATURE_NET_STEPS = steps
    return out


@pytest.mark.slow
def test_a_tiny_study_writes_the_report_json_markdown_and_figures(tiny_study, capsys):
    out = tiny_study
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= {"protocol", "gan", "accuracy", "accuracy_by_seed", "gains"}
    assert report["protocol"]["ks"] == ["5"] and report["protocol"]["seeds"] == 2
    assert set(report["accuracy"]["5"]) == set(ARMS)
    for arm in ARMS:
        entry = report["accuracy"]["5"][arm]
        assert len(entry["values"]) == 2 and all(0 <= v <= 1 for v in entry["values"])
        assert entry["ci95"][0] <= entry["mean"] <= entry["ci95"][1]
    assert "real+synthetic vs real" in report["gains"]["5"]
    metrics = report["gan"]["5"]["metrics"]
    assert set(metrics) >= {"fd", "kid_mean", "precision", "recall", "per_class_fd", "memorisation"}
    assert report["gan"]["5"]["steps"] == 4 and report["gan"]["5"]["images"] == 50
    markdown = (out / "report.md").read_text()
    assert "(a) real" in markdown and "(e) synthetic only" in markdown and "figures/accuracy_vs_k.png" in markdown
    assert report["recommendation"]["5"]["best"] in ARMS and report["recommendation"]["5"]["best"] != "synthetic"
    assert "## What to train on" in markdown and "too few seeds (< 3) to tell" in markdown  # two seeds here
    units = json.loads((out / "state.json").read_text())["units"]
    # the command line's budget reaches every arm (the floor's rule: test_every_arm_of_a_k_trains_as_long...)
    assert {unit["classifier_steps"] for key, unit in units.items() if key.startswith("result/")} == {15}
    # The command's defaults are the measured ones: the mixed arms' synthetic images went through the filter.
    assert "kept only where the arm-(b) classifier gives their class at least 0.9" in markdown
    assert (out / "gan_k5" / "samples_seed0_filtered" / "sample_info.json").is_file()
    for figure in ("accuracy_vs_k.png", "samples_k5.png", "nearest_k5.png"):
        assert (out / "figures" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_classifiers_we_did_not_write_judge_a_finished_studys_sets(tiny_study):
    """scripts/other_classifiers.py: scikit-learn's classifiers on every (split, seed) unit of a study."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "other_classifiers.py"
    # The 4-step GAN's images convince no teacher: the study's synthetic arms were its real arms, so
    # these classifiers must find exactly no difference between them.
    assert not any(len(read_synthetic(tiny_study / "gan_k5" / f"samples_seed{seed}_filtered")[1]) for seed in (0, 1))
    for extra in ([], ["--shares"], ["--unlabelled"]):
        done = subprocess.run([sys.executable, str(script), str(tiny_study), "--per-class", "5", "--warps", "2",
                               *extra], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        for name in ("logistic regression", "RBF SVM"):
            assert f"{name} (K = 5, 2 units): real " in done.stdout
            assert sum(f"split 0 seed {seed} {name}: real " in done.stdout for seed in (0, 1)) == 2
        comparisons = re.findall(r"real\+classical\+synthetic vs real\+classical: (\S+ \[\S+ \S+\])", done.stdout)
        assert comparisons == ["+0.0 [+0.0, +0.0]"] * 2, done.stdout
        if extra == ["--unlabelled"]:  # arm (d) is arm (b) here: the two teachers label alike
            taught = re.findall(r"synthetic-taught self-training vs self-training: (\S+ \[\S+ \S+\])", done.stdout)
            assert taught == ["+0.0 [+0.0, +0.0]"] * 2, done.stdout
            assert "self-training vs real+classical: " in done.stdout
        assert "the filter kept no synthetic image of seed 0; real images only" in done.stderr


@pytest.mark.slow
def test_the_gan_was_trained_on_the_k_per_class_file_alone(tiny_study):
    run_config = yaml.safe_load((tiny_study / "gan_k5" / "config.yaml").read_text())
    assert Path(run_config["data"]["source"]) == tiny_study / "data" / "k5.npz"
    assert run_config["train"]["steps"] == 4 and run_config["train"]["batch_size"] == 16


@pytest.mark.slow
def test_a_finished_study_is_not_run_again_and_a_lost_unit_is_redone(tiny_study, tmp_path, monkeypatch, capsys):
    import shutil

    out = tmp_path / "study"
    shutil.copytree(tiny_study, out)
    calls = []
    real_train = study.train_classifier

    def counting(*args, **kwargs):
        calls.append(kwargs.get("augment"))
        return real_train(*args, **kwargs)

    monkeypatch.setattr(study, "train_classifier", counting)
    for again in ("train", "export_model", "write_samples"):
        monkeypatch.setattr(study, again, lambda *args, what=again, **kwargs: pytest.fail(f"ran {what} again"))
    assert main(["evaluate", "study", "--out", str(out), *TINY_STUDY]) == 0
    assert calls == []
    printed = capsys.readouterr().out
    assert "(c) real+synthetic" in printed and "real+synthetic vs real" in printed  # the table, as text

    state = json.loads((out / "state.json").read_text())
    lost = state["units"].pop("result/k5/real+classical/seed1")
    (out / "state.json").write_text(json.dumps(state))
    assert main(["evaluate", "study", "--out", str(out), *TINY_STUDY]) == 0
    assert calls == [True]  # that one arm, with classical augmentation, and nothing else
    redone = json.loads((out / "state.json").read_text())["units"]["result/k5/real+classical/seed1"]
    assert redone["accuracy"] == lost["accuracy"]  # seeded: the same number again


@pytest.mark.slow
def test_metrics_of_the_studys_model_against_the_digits(tiny_study, tmp_path, capsys):
    out = tmp_path / "metrics"
    model = tiny_study / "gan_k5" / "generator.onnx"
    steps = features.FEATURE_NET_STEPS
    features.FEATURE_NET_STEPS = 30
    try:
        assert main(["evaluate", "metrics", "--model", str(model), "--data", "digits", "--out", str(out),
                     "--n", "200"]) == 0
    finally:
        features.FEATURE_NET_STEPS = steps
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_fake"] == 200 and metrics["n_real"] == 1797
    assert len(metrics["per_class_fd"]) == 10 and metrics["fd"] > 0
    assert (out / "metrics.md").is_file() and (out / "samples.png").is_file() and (out / "nearest.png").is_file()
    assert "FD" in capsys.readouterr().out


class _PixelTeacher(torch.nn.Module):
    """A 'classifier' of the 10 digits whose answer is written in the image: class = first pixel % 3,
    confidence from the second pixel (0 -> a uniform guess, 255 -> sure). Exportable to ONNX."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(1, 10)

    def forward(self, x):
        u8 = ((x + 1) * 127.5).round().long()
        label, sure = u8[:, 0, 0, 0] % 3, u8[:, 0, 0, 1].float() / 255
        return (torch.arange(10) == label[:, None]).float() * 20 * sure[:, None]


def test_unlabelled_images_pseudo_labels_and_the_filter(tmp_path, monkeypatch):
    study_ = Study(tmp_path / "study", settings(ks=(5,), unlabelled=True, filter_confidence=0.9,
                                                pseudo_label_confidence=0.9, synthetic_per_class=30))
    npz = np.load(study_.unlabelled_npz(5))
    assert set(npz.files) == {"images"}  # no labels: that is what makes them unlabelled
    unlabelled = study_.unlabelled_index(5)
    assert len(npz["images"]) == len(unlabelled) == len(study_.train_index) - 50
    assert not set(unlabelled.tolist()) & set(study_.subset(5).tolist())
    assert not set(unlabelled.tolist()) & set(study_.test_index.tolist())

    monkeypatch.setattr(study_, "teacher", lambda k, seed: _PixelTeacher())
    images = study_.data.images  # rewrite the answers into the images the teacher reads
    images[unlabelled, 0, 0, 0] = study_.data.labels[unlabelled].to(torch.uint8)  # right for classes 0..2
    images[unlabelled, 0, 0, 1] = torch.where(unlabelled % 2 == 0, 255, 0).to(torch.uint8)  # sure of half
    kept, labels, right = study_.pseudo_labelled(5, seed=0)
    assert len(kept) == int((unlabelled % 2 == 0).sum())
    truth = study_.data.labels[unlabelled][unlabelled % 2 == 0]
    assert torch.equal(labels, truth % 3) and right == pytest.approx(float((truth < 3).float().mean()))

    # a GAN that learns from pseudo-labels gets the labelled images and the sure ones, with the
    # teacher's labels (and every unlabelled image without labels: the end-to-end test below)
    with np.load(study_.pseudo_labelled_npz(5)) as labelled:
        assert len(labelled["labels"]) == 50 + len(kept)
        sure = unlabelled[unlabelled % 2 == 0]
        assert np.array_equal(labelled["images"][50:], images[sure].permute(0, 2, 3, 1).numpy())
        assert np.array_equal(labelled["labels"][50:], labels.numpy())

    # The filter is the sampler's (`ganaug sample --filter`), with the teacher exported to ONNX: a
    # generator of 300 digits, each kept iff the teacher's probability of its label is >= 0.9.
    (tmp_path / "gan").mkdir()
    generator = make_model(tmp_path / "gan" / "generator.onnx", class_names=study_.class_names, shape=(16, 16, 1),
                           seed=2)  # a generator whose images include all three cases below
    images, labels, share = study_.filtered(5, Path(generator), seed=0)
    assert (tmp_path / "study" / "teachers" / "k5_seed0.onnx").is_file()
    fake, fake_labels = Sampler.load(generator).generate(300, seed=0)  # the unfiltered set, brute force
    said, sure = fake[:, 0, 0, 0] % 3, fake[:, 0, 1, 0] / 255  # NHWC: the pixels the teacher reads
    agree = torch.from_numpy(said == fake_labels)
    p_label = torch.where(agree, torch.exp(torch.from_numpy(20 * sure)) / (torch.exp(torch.from_numpy(20 * sure)) + 9),
                          1 / (torch.exp(torch.from_numpy(20 * sure)) + 9))
    keep = p_label >= 0.9
    # kept: sure and agreeing with the conditioning label; dropped: the teacher says another class, or is unsure
    assert keep.any() and (~agree).any() and (agree & ~keep).any()
    assert labels.tolist() == fake_labels[keep.numpy()].tolist() and share == pytest.approx(float(keep.float().mean()))
    assert torch.equal(images, torch.from_numpy(fake[keep.numpy()]).permute(0, 3, 1, 2))


def test_every_arm_has_a_recipe_a_label_and_a_teacher_that_saw_no_unlabelled_image():
    from ganaug.evaluate.report import ARM_LABELS
    from ganaug.evaluate.study import ARM_RECIPES, UNLABELLED_ARMS

    assert set(ARM_RECIPES) == set(ARMS) | set(UNLABELLED_ARMS) == set(ARM_LABELS)
    teachers = {recipe.pseudo_labels_from for recipe in ARM_RECIPES.values()} - {None}
    assert teachers == {"real+classical", "real+classical+synthetic"} and teachers <= set(ARMS)


def test_a_k_that_takes_every_training_image_leaves_no_unlabelled_arm(tmp_path):
    from ganaug.evaluate.study import ALL, UNLABELLED_ARMS

    study_ = Study(tmp_path, settings(ks=(5, 500, ALL), unlabelled=True))
    assert study_.arms_of(5) == ARMS + UNLABELLED_ARMS
    assert study_.arms_of(500) == study_.arms_of(ALL) == ARMS  # nothing is unlabelled: no semi GAN either
    assert study_.units_total == (4 + 9) + 2 * (2 + 5)  # K=5: two GANs, nine arms; the others one GAN, five


@pytest.mark.slow
def test_the_unlabelled_arms_end_to_end_and_the_synthetic_taught_teacher(tmp_path, monkeypatch):
    """All nine arms of a tiny study with unlabelled images. The synthetic-taught self-training (i) is
    self-training (f) with arm (d)'s classifier as the teacher; a resumed study retrains that teacher
    and gets its pseudo-labels again."""
    from ganaug.evaluate.classifier import predict_proba
    from ganaug.evaluate.study import UNLABELLED_ARMS

    monkeypatch.setattr(features, "FEATURE_NET_STEPS", 30)
    tiny = settings(ks=(5,), unlabelled=True, synthetic_per_class=12, pseudo_label_confidence=0.0,
                    classifier_steps=15, classifier_min_epochs=0)
    first = Study(tmp_path / "study", tiny)
    teachers = []
    pseudo_labelled = first.pseudo_labelled
    monkeypatch.setattr(first, "pseudo_labelled",
                        lambda k, seed, by: teachers.append(by) or pseudo_labelled(k, seed, by))
    results = first.run()
    assert set(results["accuracy_by_seed"]["5"]) == set(ARMS) | set(UNLABELLED_ARMS)
    assert teachers == ["real+classical", "real+classical", "real+classical+synthetic"]  # arms (f), (h), (i)
    # The semi GAN learns the classes from the labelled and pseudo-labelled images, and the images from
    # every unlabelled one too, even where (confidence 0) the teacher labelled them all.
    semi_gan = yaml.safe_load((tmp_path / "study" / "gan_k5_unlabelled" / "config.yaml").read_text())
    assert semi_gan["data"]["source"] == str(first.pseudo_labelled_npz(5))
    assert semi_gan["data"]["unlabelled"] == str(first.unlabelled_npz(5))

    units = json.loads((tmp_path / "study" / "state.json").read_text())["units"]
    taught, plain = units["result/k5/synthetic-taught self-training/seed0"], units["result/k5/self-training/seed0"]
    resumed = Study(tmp_path / "study", tiny)
    unlabelled = resumed.data.images[resumed.unlabelled_index(5)]
    truth = resumed.data.labels[resumed.unlabelled_index(5)]
    for record, arm in ((taught, "real+classical+synthetic"), (plain, "real+classical")):
        labels = predict_proba(resumed.classifier(5, arm, 0)[0], unlabelled).argmax(1)
        assert record["pseudo_labelled"] == len(truth)  # confidence 0: every unlabelled image gets a label
        assert record["pseudo_label_accuracy"] == round(float((labels == truth).float().mean()), 4)
    assert taught["pseudo_label_accuracy"] != plain["pseudo_label_accuracy"]  # two teachers, two labellings


def test_split_studies_pool_into_paired_units():
    from ganaug.evaluate.report import combine
    from ganaug.evaluate.report import summarise as report_summarise

    def study_summary(split, real, classical):
        return report_summarise({"protocol": {"split_seed": split, "seeds": 2}, "gan": {"5": {"steps": 1}},
                                 "accuracy_by_seed": {"5": {"real": real, "real+classical": classical}}})

    pooled = combine([study_summary(0, [0.5, 0.6], [0.7, 0.8]), study_summary(1, [0.4, 0.5], [0.4, 0.6])])
    assert pooled["accuracy_by_seed"]["5"]["real"] == [0.5, 0.6, 0.4, 0.5]
    assert pooled["protocol"]["split_seeds"] == [0, 1]
    assert set(pooled["gan"]) == {"5 (split 0)", "5 (split 1)"}
    assert [s["split_seed"] for s in pooled["by_split"]] == [0, 1]


def test_report_says_what_to_train_on_and_whether_synthetic_images_are_worth_making():
    from ganaug.evaluate.report import recommendation_table
    from ganaug.evaluate.report import summarise as report_summarise

    noise = [0.0, 0.004, -0.003, -0.001]  # mean 0: each arm scores its level

    def arm(level):
        return [level + n for n in noise]

    summary = report_summarise({"protocol": {}, "gan": {}, "accuracy_by_seed": {
        # synthetic images win clearly, and the CAS arm (e) is never a recipe however it scores
        "5": {"real": arm(0.89), "real+classical": arm(0.92), "real+classical+synthetic": arm(0.94),
              "synthetic": arm(0.99)},
        # a tie between the warp and the warp with synthetic images: they are optional
        "10": {"real": arm(0.94), "real+classical": arm(0.961),
               "real+classical+synthetic": [0.963, 0.959, 0.967, 0.961]},
        # the real images alone are best and the synthetic arm loses: not worth making
        "all": {"real": arm(0.994), "real+classical": [0.993, 0.994, 0.990, 0.992],
                "real+classical+synthetic": arm(0.990)},
        # synthetic-taught self-training is best, and its teacher saw the synthetic images
        "20": {"real+classical": arm(0.97), "self-training": arm(0.975),
               "synthetic-taught self-training": arm(0.98)},
    }})
    advice = summary["recommendation"]
    assert advice["5"]["best"] == "real+classical+synthetic" and advice["5"]["synthetic_needed"]
    assert advice["5"]["as_good"] == []
    assert advice["10"]["best"] == "real+classical+synthetic" and not advice["10"]["synthetic_needed"]
    assert advice["10"]["best_without_synthetic"] == "real+classical"
    assert advice["all"]["best"] == "real" and advice["all"]["best_without_synthetic"] == "real"
    assert [a["arm"] for a in advice["all"]["as_good"]] == ["real+classical"]  # within noise of the best
    assert advice["20"]["synthetic_needed"]
    table = recommendation_table(summary, markdown=True)
    assert "| 5 | (d) real+classical+synthetic | 94.0 | - | worth making" in table
    assert "optional: (b) real+classical is as good without them" in table
    assert "| all | (a) real | 99.4 | (b) real+classical | not worth making" in table

    two_seeds = report_summarise({"protocol": {}, "gan": {}, "accuracy_by_seed": {
        "5": {"real": [0.9, 0.91], "real+classical+synthetic": [0.95, 0.96]}}})
    assert "too few seeds" in recommendation_table(two_seeds)
