"""scripts/augment_study.py's bookkeeping: a unit's index sets and the choice of each arm's budget.
What the study measures rests on these two: no image in two roles, and the test split never used
to choose (docs/evaluation.md, "ganaug augment on held-out data")."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def study():
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location("augment_study", SCRIPTS / "augment_study.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["augment_study"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("augment_study", None)
        sys.path.remove(str(SCRIPTS))


LABELS = torch.arange(10).repeat_interleave(100)  # 1,000 images, 10 classes of 100


def test_a_unit_puts_every_image_in_exactly_one_role(study):
    unit = study.unit_split(LABELS, test_size=200, split_seed=7, k=5, validation_size=150)
    roles = [unit.labelled, unit.pool, unit.validation, unit.test]
    assert [len(r) for r in roles] == [50, 600, 150, 200]
    assert np.array_equal(np.sort(np.concatenate(roles)), np.arange(len(LABELS)))
    assert np.bincount(LABELS[unit.labelled].numpy()).tolist() == [5] * 10
    assert np.bincount(LABELS[unit.validation].numpy()).tolist() == [15] * 10  # stratified


def test_the_validation_images_come_out_of_the_pool_and_nothing_else_moves(study):
    round2 = study.unit_split(LABELS, test_size=200, split_seed=7, k=5)
    round3 = study.unit_split(LABELS, test_size=200, split_seed=7, k=5, validation_size=150)
    assert len(round2.validation) == 0
    assert np.array_equal(round2.test, round3.test) and np.array_equal(round2.labelled, round3.labelled)
    assert np.array_equal(np.sort(np.concatenate([round3.pool, round3.validation])), round2.pool)
    again = study.unit_split(LABELS, test_size=200, split_seed=7, k=5, validation_size=150)
    assert np.array_equal(again.validation, round3.validation)  # a split seed fixes the unit


def test_the_budget_that_scores_best_on_validation_is_kept_the_smaller_on_a_tie(study):
    assert study.pick({400: 0.80, 1200: 0.86, 3600: 0.84}) == 1200
    assert study.pick({1200: 0.5, 400: 0.5}) == 400
    assert study.pick({400: None}) == 400  # one budget: nothing to choose, no validation read


@pytest.mark.parametrize("kind", ["classifier", "with synthetic images", "fixmatch"])
def test_an_arm_trains_at_a_budget_and_is_scored_on_validation_only_where_there_is_a_choice(study, kind):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=generator)
    labels = torch.arange(4).repeat(10)
    extra = {"with synthetic images": {"synthetic": (images[:8], labels[:8]), "synthetic_share": 0.5},
             "fixmatch": {"unlabelled": images[20:]}}.get(kind, {})
    arm = study.Arm("arm", 0, images, labels, "affine", [3, 2], (images[:12], labels[:12]), 4, **extra)
    result = study.train_budget(arm, 3)
    assert 0 <= result["validation_accuracy"] <= 1
    model = study.SmallCNN(1, 4)
    model.load_state_dict(result["weights"])  # what the parent scores on the test split
    again = study.train_budget(arm, 3)
    assert all(torch.equal(again["weights"][k], v) for k, v in result["weights"].items())  # the seed fixes it
    alone = study.Arm("arm", 0, images, labels, "affine", [3], (images[:0], labels[:0]), 4, **extra)
    assert study.train_budget(alone, 3)["validation_accuracy"] is None  # one budget: validation unread


def test_augment_validation_scores_augments_folder_on_the_units_validation_images_and_resumes(tmp_path):
    """scripts/augment_validation.py on a tiny digits unit: one validation accuracy per budget; run
    again, augment resumes and the record is the same."""
    import json
    import os
    import subprocess

    command = [sys.executable, str(SCRIPTS / "augment_validation.py"), "--data", "digits", "--resolution", "8",
               "--test-size", "300", "--split-seed", "100", "--k", "2", "--validation-size", "100",
               "--budgets", "3,5", "--out", str(tmp_path / "check"), "--",
               "--folds", "2", "--policy", "affine", "--synthetic", "never", "--classifier-steps", "3",
               "--teacher-steps", "3", "--estimate-unlabelled", "40", "train.threads=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPTS.parent)}
    first = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    record = json.loads((tmp_path / "check" / "validation.json").read_text())
    assert set(record["validation_accuracy"]) == {"3", "5"}
    assert all(0 <= value <= 1 for value in record["validation_accuracy"].values())
    assert record["recipe"] in ("classical", "pseudo-labels") and record["augment_args"][-1] == "train.threads=1"
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "check" / "validation.json").read_text()) == record
    printed = [json.loads(line) for line in again.stdout.splitlines() if line.startswith('{"steps"')]
    assert {str(p["steps"]): p["validation_accuracy"] for p in printed} == record["validation_accuracy"]
