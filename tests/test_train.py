"""The training loop in one process: gradients, precision, resume equivalence, divergence, outputs."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from conftest import TINY, error_line

from ganaug.cli import main
from ganaug.config import load_config
from ganaug.data import load_dataset
from ganaug.errors import UserError
from ganaug.models import ModelSpec
from ganaug.train.dist import read_env
from ganaug.train.rundir import RunDirectory
from ganaug.train.trainer import Trainer


def train(run_dir: Path, *overrides: str) -> int:
    return main(["train", "--run-dir", str(run_dir), *TINY, "train.threads=1", *overrides])


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def make_trainer(tmp_path, *overrides) -> Trainer:
    cfg = load_config(None, [*TINY, *overrides])
    data = load_dataset(cfg.data)
    return Trainer(cfg, RunDirectory(tmp_path), read_env(), data, ModelSpec.from_config(cfg.model, data))


def test_the_mode_seeking_term_sees_pairs_of_one_class_and_their_latents(tmp_path, monkeypatch):
    """The trainer's side of train.diversity_weight: G draws pairs of one class, and the objective gets
    the latents that drew them (without them the term would silently be skipped)."""
    trainer = make_trainer(tmp_path, "train.diversity_weight=0.1")
    calls = []
    original = trainer.objective.generator_loss

    def spy(D, fake, fake_labels, semi_supervised=False, latents=None):
        calls.append((fake_labels.clone(), latents))
        return original(D, fake, fake_labels, semi_supervised, latents)

    monkeypatch.setattr(trainer.objective, "generator_loss", spy)
    stats = trainer.train_step()
    (labels, latents), = calls
    half = len(labels) // 2
    assert torch.equal(labels[:half], labels[half: 2 * half])
    assert latents is not None and latents.shape == (len(labels), trainer.spec.z_dim)
    assert stats["reg/mode_seeking"] > 0
    assert "reg/mode_seeking" not in make_trainer(tmp_path / "off", "train.diversity_weight=0").train_step()


def test_each_update_reaches_only_the_network_it_trains(tmp_path):
    trainer = make_trainer(tmp_path, "train.r1_gamma=1", "train.r1_every=1")
    seen = {}

    def spy(name, optimizer):
        original = optimizer.step

        def step(*args, **kwargs):
            seen[name] = {
                "G": [p.grad is not None for p in trainer.G.parameters()],
                "D": [p.grad is not None for p in trainer.D.parameters()],
            }
            return original(*args, **kwargs)

        optimizer.step = step

    spy("d_update", trainer.opt_d)
    spy("g_update", trainer.opt_g)
    before = [p.detach().clone() for p in trainer.D.parameters()]
    trainer.train_step()
    assert all(seen["d_update"]["D"]) and not any(seen["d_update"]["G"])
    assert all(seen["g_update"]["G"]) and not any(seen["g_update"]["D"])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.D.parameters()))


def test_bf16_autocast_runs_the_convolutions_in_bf16(tmp_path):
    trainer = make_trainer(tmp_path, "train.precision=bf16")
    dtypes = []
    conv = next(m for m in trainer.D.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    stats = [trainer.train_step() for _ in range(3)]
    assert trainer.precision.name == "bf16" and set(dtypes) == {torch.bfloat16}
    assert all(torch.isfinite(s["loss/d"]) and torch.isfinite(s["loss/g"]) for s in stats)


def test_fp16_uses_a_grad_scaler_per_optimizer(tmp_path):
    run = tmp_path / "run"
    assert train(run, "train.precision=fp16", "train.steps=3", "ckpt.every=3") == 0
    state = load(run / "checkpoints" / "last.pt")
    assert state["scaler_g"]["scale"] > 0 and state["scaler_d"]["scale"] > 0
    assert state["config"]["train"]["precision"] == "fp16"


def _class_folder(root: Path, per_class: int = 20) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


@pytest.mark.parametrize("variant", ["in-memory", "streamed-mid-epoch", "ada-between-adjustments"])
def test_resume_continues_the_same_trajectory(tmp_path, variant):
    """Stopped at step 3 and resumed, a run ends where an uninterrupted one does: weights, optimiser,
    data order. Streamed: 40 images, 2 batches an epoch, so step 3 is mid-epoch and the resume makes
    a new DataLoader there. ADA: it adjusts every 4 steps, so step 3 holds 3 steps of pending signs."""
    common = ["train.r1_gamma=0.5", "train.r1_every=2", "ckpt.every=3", "train.loss=bce"]
    if variant == "streamed-mid-epoch":
        common += [f"data.source={_class_folder(tmp_path / 'data')}", "data.in_memory=false", "data.num_workers=1"]
    if variant == "ada-between-adjustments":
        common += ["train.ada_target=0.01", "train.ada_kimg=0.1", "train.lr_d=0.005"]  # D sure early: p rises
    assert train(tmp_path / "straight", *common, "train.steps=6") == 0
    assert train(tmp_path / "split", *common, "train.steps=3") == 0
    assert load(tmp_path / "split" / "checkpoints" / "last.pt")["step"] == 3
    assert main(["train", "--run-dir", str(tmp_path / "split"), "train.steps=6"]) == 0  # config comes from the run
    a, b = load(tmp_path / "straight" / "checkpoints" / "last.pt"), load(tmp_path / "split" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 6
    for key in ("G", "D", "G_ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    assert all(torch.equal(x, y) for x, y in zip(a["opt_g"]["state"][0].values(), b["opt_g"]["state"][0].values()))
    assert a["data"] == b["data"] and a["objective"] == b["objective"] and a["ada_pending"] == b["ada_pending"]
    if variant == "ada-between-adjustments":
        assert a["objective"]["augment"]["p"] > 0  # ADA moved p at step 4, in both runs


def test_same_seed_gives_the_same_weights_and_another_seed_does_not(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert train(tmp_path / name, "train.steps=2", f"train.seed={seed}") == 0
    a, b, c = (load(tmp_path / n / "checkpoints" / "last.pt")["G"] for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_checkpoint_holds_only_safe_values_and_the_run_layout(tmp_path):
    run = tmp_path / "run"
    assert train(run, "train.steps=4", "ckpt.every=1", "ckpt.keep=2", "log.image_every=2") == 0
    state = load(run / "checkpoints" / "last.pt")  # weights_only=True succeeds
    assert {"schema", "step", "config", "model", "class_names", "G", "D", "G_ema", "opt_g", "opt_d",
            "scaler_g", "scaler_d", "data", "rng", "objective", "images_seen"} <= set(state)
    assert state["schema"] == 2 and state["images_seen"] == 4 * 16
    assert state["step"] == 4 and state["class_names"] == [str(i) for i in range(10)]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt", "step_0000003.pt", "step_0000004.pt",
                                                                       "steps.json"]
    assert (run / "config.yaml").read_text().startswith("# ganaug train: the resolved config")
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000002.png", "step_0000004.png"]


def test_retention_deletes_only_the_step_files_ganaug_wrote(tmp_path, capsys):
    """A step file of the user's (even one named like the next step's) and a folder under a step
    file's name are left alone; the run's own old step files still go."""
    run = tmp_path / "run"
    folder = run / "checkpoints"
    assert train(run, "train.steps=1", "ckpt.every=1", "ckpt.keep=2") == 0
    (folder / "step_0000000.pt").write_bytes(b"the user's own, older than any step")
    (folder / "step_0000002.pt").write_bytes(b"the user's own, named like the next step")
    (folder / "step_0000003.pt").mkdir()
    assert train(run, "train.steps=5", "ckpt.every=1", "ckpt.keep=2") == 0
    assert (folder / "step_0000000.pt").read_bytes().startswith(b"the user's own")
    assert (folder / "step_0000002.pt").read_bytes().startswith(b"the user's own") and (folder / "step_0000003.pt").is_dir()
    assert sorted(p.name for p in folder.glob("step_*.pt")) == [f"step_000000{i}.pt" for i in (0, 2, 3, 4, 5)]
    assert "step_0000002.pt exists and ganaug did not write it: left alone" in capsys.readouterr().err
    (folder / "steps.json").write_text('["../../elsewhere.pt"]')  # a damaged record deletes nothing
    assert train(run, "train.steps=6", "ckpt.every=1", "ckpt.keep=2") == 0
    assert sorted(p.name for p in folder.glob("step_*.pt")) == [f"step_000000{i}.pt" for i in (0, 2, 3, 4, 5, 6)]


def test_tensorboard_scalars_images_and_config_are_readable(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert train(run, "train.steps=4", "log.every=2", "log.image_every=4") == 0
    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    expected = {"loss/d", "loss/g", "d/real_score", "d/fake_score", "grad_norm/d", "grad_norm/g",
                "lr/g", "lr/d", "perf/images_per_sec", "perf/step_ms"}
    assert expected <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("loss/d")] == [2, 4]
    assert all(e.value == e.value for e in events.Scalars("loss/g"))  # not NaN
    assert tags["images"] == ["samples/ema"]
    assert any("config" in t for t in tags["tensors"])


def test_non_finite_gradients_stop_the_run_with_a_diagnosis_checkpoint(tmp_path, monkeypatch, capsys):
    from ganaug.train import losses

    monkeypatch.setattr(losses, "generator_loss", lambda kind, logits: logits.float().mean() * float("nan"))
    run = tmp_path / "run"
    assert train(run, "train.steps=10", "train.max_nonfinite_steps=3") == 2
    err = error_line(capsys.readouterr().err, "train")
    assert "3 consecutive steps with non-finite gradients at step 3" in err
    diverged = load(run / "checkpoints" / "diverged_step_0000003.pt")
    assert all(torch.isfinite(t).all() for t in diverged["G"].values())  # the bad steps were skipped
    assert not (run / "checkpoints" / "last.pt").exists()


def test_resume_refuses_another_model_shape(tmp_path, trained_run, capsys):
    import shutil

    run = shutil.copytree(trained_run(), tmp_path / "run")
    assert main(["train", "--run-dir", str(run), "model.z_dim=7"]) == 2
    assert "trained with another model or data shape (z_dim: 16 -> 7)" in error_line(capsys.readouterr().err, "train")


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch exploited_marker",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"schema": 1, "payload": _Exploit()}, folder / "last.pt", pickle_module=pickle)
    assert main(["train", "--run-dir", str(tmp_path / "run"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "no loadable checkpoint" in error_line(err, "train")
    assert "Unsupported GLOBAL posix.system" in err or "GLOBAL posix.system" in err
    assert not (tmp_path / "exploited_marker").exists()


def test_an_unreadable_last_checkpoint_falls_back_to_the_newest_step_file(tmp_path, trained_run, capsys):
    import shutil

    run = shutil.copytree(trained_run(), tmp_path / "run")
    (run / "checkpoints" / "last.pt").write_bytes(b"garbage")
    assert main(["train", "--run-dir", str(run), "train.steps=6"]) == 0
    assert "last.pt is not a PyTorch checkpoint, or is truncated; trying an older checkpoint" in capsys.readouterr().err
    assert load(run / "checkpoints" / "last.pt")["step"] == 6


def test_run_dir_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("precious")
    assert main(["train", "--run-dir", str(target), *TINY]) == 2
    assert "is a file, not a directory" in error_line(capsys.readouterr().err, "train")
    assert target.read_text() == "precious"


def test_conditional_true_without_labels_is_refused(tmp_path, capsys):
    import numpy as np

    np.savez(tmp_path / "d.npz", images=np.zeros((40, 8, 8), np.uint8))
    assert main(["train", "--run-dir", str(tmp_path / "r"), *TINY, f"data.source={tmp_path / 'd.npz'}",
                 "model.conditional=true"]) == 2
    assert "model.conditional=true but the training data has no labels" in error_line(capsys.readouterr().err, "train")


def test_a_second_trainer_on_the_same_run_dir_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    with RunDirectory(run).lock():  # as a first `ganaug train` (or a resubmitted job) holds it
        assert train(run, "train.steps=2") == 2
    assert "another `ganaug train` is running on" in error_line(capsys.readouterr().err, "train")
    assert not (run / "checkpoints" / "last.pt").exists()
    assert train(run, "train.steps=2") == 0  # released with the holder


def test_unlabelled_images_join_training_through_the_semi_supervised_term(tmp_path):
    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "u.npz", images=rng.integers(0, 255, (40, 12, 12), dtype=np.uint8))
    run = tmp_path / "run"
    assert train(run, f"data.unlabelled={tmp_path / 'u.npz'}", "train.steps=3", "log.every=1") == 0
    state = load(run / "checkpoints" / "last.pt")
    assert state["unlabelled_data"] == {"epoch": 1, "batch": 1}  # 40 images, batch 16: 2 per epoch, 3 drawn
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("loss/d_unlabelled")] == [1, 2, 3]


def test_a_checkpoint_written_before_the_first_release_is_refused_by_name(tmp_path, trained_run, capsys):
    """Schema 1 (no objective state, no image count) has no upgrade path: one line, nothing changed."""
    import shutil

    run = shutil.copytree(trained_run(), tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    state = load(last)
    state["schema"] = 1
    torch.save(state, last)
    for step_file in (run / "checkpoints").glob("step_*.pt"):
        step_file.unlink()
    before = last.read_bytes()
    assert main(["train", "--run-dir", str(run), "train.steps=6"]) == 2
    assert "has schema 1; this ganaug reads schema 2" in error_line(capsys.readouterr().err, "train")
    assert main(["export", str(run), "--out", str(tmp_path / "g.onnx")]) == 2
    assert last.read_bytes() == before and not (tmp_path / "g.onnx").exists()


def test_a_resume_starts_from_the_runs_config_yaml_not_from_the_checkpoints_copy(tmp_path, trained_run):
    """A checkpoint is a file from elsewhere as far as a resume knows: its stored config cannot steer
    which data the run reads. The run's own config.yaml (marked as ganaug's) is the base."""
    import shutil

    from ganaug.train import resolve_config

    run = shutil.copytree(trained_run(), tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    state = load(last)
    state["config"]["data"]["source"] = str(tmp_path / "somewhere_else.npz")
    state["config"]["train"]["lr_g"] = 0.5
    torch.save(state, last)
    saved = resolve_config(run)
    assert saved.data.source == "digits" and saved.train.lr_g != 0.5
    assert resolve_config(run, overrides=["train.lr_g=0.001"]).train.lr_g == 0.001
    assert main(["train", "--run-dir", str(run), f"train.steps={state['step'] + 2}"]) == 0
    assert load(last)["config"]["data"]["source"] == "digits"
    # a config.yaml that is not ganaug's is neither trained on nor overwritten
    (run / "config.yaml").write_text("data:\n  source: elsewhere.npz\n")
    with pytest.raises(UserError, match="was not written by ganaug train"):
        resolve_config(run)


def test_the_config_and_final_numbers_reach_the_hparams_dashboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = tmp_path / "run"
    assert train(run, "train.steps=4", "log.every=2", "log.image_every=3") == 0
    events = EventAccumulator(str(run / "tb"), size_guidance={"tensors": 0, "images": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["train.steps"].number_value == 4
    assert start.hparams["train.precision_resolved"].string_value in ("fp32", "bf16")
    assert start.hparams["train.diffaug"].string_value == "color,translation,cutout"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"final/loss/d", "final/loss/g", "final/augment_p"}
    assert any("precision" in tag for tag in events.Tags()["tensors"])
    # a grid at step 3 (the cadence) and a final one at step 4
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000003.png", "step_0000004.png"]
