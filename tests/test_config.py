"""Config: precedence (command line > file > defaults), errors that name the key, --dry-run, --help-config."""

from __future__ import annotations

import re

import pytest
import yaml

from ganaug.cli import main
from ganaug.config import Config, ConfigError, all_keys, dump_yaml, help_config, load_config


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
    ("train.diffaug=color,blur", "train.diffaug: unknown entry 'blur'"),
    ("train.diffaug=color,color", "train.diffaug: ['color', 'color'] names an entry twice"),
    ("train.ema_decay=1.5", "train.ema_decay: 1.5 must be below 1"),
    ("train.beta2=1", "train.beta2: 1.0 must be below 1"),
    ("train.seed=9223372036854775808", "train.seed: 9223372036854775808 is above the maximum 2147483647"),
    ("model.z_dim=10000000000", "model.z_dim: 10000000000 is above the maximum 4096"),
    ("train.threads=100000", "train.threads: 100000 is above the maximum 1024"),
    ("model.conditional=maybe", "model.conditional: expected true, false or auto, got 'maybe'"),
    ("model.arch=seed", "model.arch: 'seed' is not one of dcgan, dcgan_tconv, resnet, article28"),
    ("model.arch=article28", "data.resolution: model.arch=article28 is a 28x28 network, got 32"),
    ("steps", "override 'steps' is not of the form dotted.key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_floats_accept_ints_and_booleans_accept_yaml_words():
    cfg = load_config(None, ["train.lr_g=1", "data.download=yes", "train.diffaug=none", "model.conditional=auto",
                             "data.in_memory=false", "data.channels=3"])
    assert cfg.train.lr_g == 1.0 and isinstance(cfg.train.lr_g, float)
    assert cfg.data.download is True
    assert cfg.train.diffaug == [] and cfg.model.conditional is None and cfg.data.in_memory is False
    assert cfg.data.channels == 3
    assert load_config(None, ["train.diffaug=translation, cutout"]).train.diffaug == ["translation", "cutout"]


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
                "data.unlabelled", "train.steps", "train.batch_size", "train.precision", "train.loss", "train.ema_decay",
                "train.diffaug", "train.seed", "log.every", "log.image_every", "ckpt.every"}
    assert required <= set(all_keys())


def test_typed_values_round_trip_through_the_written_yaml(tmp_path):
    cfg = load_config(None, ["model.conditional=false", "train.diffaug=cutout"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    again = load_config(path)
    assert again == cfg and again.data.in_memory is None and again.train.diffaug == ["cutout"]
    path.write_text("model:\n  conditional: auto\ntrain:\n  diffaug: [color]\n")
    assert load_config(path).model.conditional is None and load_config(path).train.diffaug == ["color"]


@pytest.mark.parametrize("text, message", [
    ("a: &a [x, x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b]\n", "YAML aliases (*name) are not allowed"),
    ("train:\n  steps: 5\ntrain:\n  lr_g: 0.1\n", "duplicate key 'train' (line 3)"),
    ("train:\n  steps: 5\n  steps: 6\n", "duplicate key 'steps' (line 3)"),
    ("[" * 100_000, "nested too deeply"),
])
def test_hostile_config_files_are_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


def test_config_files_that_are_not_text_or_too_big_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"train:\n  steps: 5 \xff\xfe\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text .byte 0xff at offset 18"):
        load_config(path)
    path.write_bytes(b"# " + b"x" * (2 << 20))
    with pytest.raises(ConfigError, match="larger than 1024 KiB"):
        load_config(path)
