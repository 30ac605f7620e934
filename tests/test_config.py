"""Config: precedence (command line > file > defaults), errors that name the key, --dry-run, --help-config."""

from __future__ import annotations

import pytest
import yaml

from ganaug.cli import main
from ganaug.config import Config, ConfigError, all_keys, help_config, load_config


def test_defaults_file_and_overrides_take_precedence_in_order(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("train:\n  steps: 50\n  lr_g: 0.001\nmodel:\n  z_dim: 64\n")
    cfg = load_config(config_file, ["train.steps=7", "train.loss=bce"])
    assert cfg.train.steps == 7  # command line beats the file
    assert cfg.train.lr_g == 0.001  # the file beats the default
    assert cfg.model.z_dim == 64
    assert cfg.train.loss == "bce"
    assert cfg.train.batch_size == Config().train.batch_size  # untouched default


def test_base_config_sits_below_file_and_overrides(tmp_path):
    base = Config().to_dict()
    base["train"]["steps"] = 999
    base["model"]["z_dim"] = 12
    cfg = load_config(None, ["model.z_dim=13"], base=base)
    assert (cfg.train.steps, cfg.model.z_dim) == (999, 13)


@pytest.mark.parametrize("override, message", [
    ("train.stepz=5", "unknown config key 'train.stepz' (did you mean train.steps?)"),
    ("nonsense.key=1", "unknown config key 'nonsense.key'"),
    ("train.steps=ten", "train.steps: expected int, got str 'ten'"),
    ("train.steps=1.5", "train.steps: expected int, got float 1.5"),
    ("train.steps=true", "train.steps: expected int, got bool True"),
    ("train.steps=0", "train.steps: 0 is below the minimum 1"),
    ("train.precision=fp8", "train.precision: 'fp8' is not one of auto, fp32, bf16, fp16"),
    ("data.resolution=18", "data.resolution: 18 is not 4..7 times a power of two"),
    ("data.resolution=30", "data.resolution: 30 is not 4..7 times a power of two"),
    ("train.diffaug=color,blur", "train.diffaug: unknown policy 'blur'"),
    ("train.ema_decay=1.5", "train.ema_decay: 1.5 must be in [0, 1)"),
    ("model.arch=seed", "data.resolution: model.arch=seed is a 28x28 network, got 32"),
    ("steps", "override 'steps' is not of the form dotted.key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_floats_accept_ints_and_booleans_accept_yaml_words():
    cfg = load_config(None, ["train.lr_g=1", "data.download=yes", "train.diffaug=none"])
    assert cfg.train.lr_g == 1.0 and isinstance(cfg.train.lr_g, float)
    assert cfg.data.download is True
    assert cfg.train.diffaug == "none"


def test_bad_file_contents_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batchsize: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.batchsize' .did you mean train.batch_size"):
        load_config(bad)
    bad.write_text("train: 5\n")
    with pytest.raises(ConfigError, match="unknown config key 'train'"):
        load_config(bad)
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")


def test_dry_run_prints_the_resolved_config(capsys, tmp_path):
    assert main(["train", "--dry-run", "train.steps=11", "model.z_dim=5"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["steps"] == 11 and printed["model"]["z_dim"] == 5
    assert set(printed) == {"data", "model", "train", "log", "ckpt"}


def test_help_config_lists_every_key_with_type_default_and_doc(capsys):
    assert main(["train", "--help-config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == all_keys()
    steps = next(line for line in lines if line.startswith("train.steps "))
    assert steps.split()[1:3] == ["int", str(Config().train.steps)] and "steps" in steps.split(maxsplit=3)[3]
    assert help_config().count("\n") == len(all_keys()) - 1


def test_cli_reports_a_config_error_in_one_line(capsys, tmp_path):
    code = main(["train", "--run-dir", str(tmp_path / "r"), "train.stepz=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["ganaug train: error: unknown config key 'train.stepz' (did you mean train.steps?)"]
    assert not (tmp_path / "r").exists()  # nothing created for a rejected command


def test_every_key_the_design_requires_exists():
    required = {"data.source", "data.root", "data.download", "data.resolution", "model.z_dim", "model.conditional",
                "train.steps", "train.batch_size", "train.precision", "train.loss", "train.ema_decay",
                "train.diffaug", "train.seed", "log.every", "log.image_every", "ckpt.every"}
    assert required <= set(all_keys())
