"""Typed configuration: nested dataclasses, a YAML file, dotted ``key=value`` overrides.

Precedence is command line > file > defaults. Every field carries a one-line doc (``--help-config``
prints them and the README's reference is that list); unknown keys, wrong types and out-of-range
values are errors that name the key. Torch-free: ``ganaug.cli`` imports this module.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ganaug.errors import UserError


class ConfigError(UserError):
    """A config key is unknown, has the wrong type or an out-of-range value."""


def option(default: Any, doc: str, *, choices: tuple | None = None, min: float | None = None,  # noqa: A002
           max: float | None = None) -> Any:  # noqa: A002
    """A config field with its one-line doc and the constraints `validate` checks."""
    meta = {"doc": doc, "choices": choices, "min": min, "max": max}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    source: str = option("digits", "digits | mnist | fashion_mnist | cifar10 | an image folder | a .npz file")
    root: str = option("data", "where torchvision datasets (mnist, fashion_mnist, cifar10) are looked for")
    download: bool = option(False, "let torchvision download its dataset into data.root when missing")
    resolution: int = option(32, "image side in pixels: 4..7 times a power of two up to 1024, e.g. 16, 28, 32, 64",
                             min=8, max=1024)
    channels: int = option(0, "image channels, 1 or 3; 0 takes them from the data", choices=(0, 1, 3))
    in_memory: str = option("auto", "hold the dataset as one tensor on the device: auto | true | false",
                            choices=("auto", "true", "false"))
    max_memory_mb: int = option(4096, "with in_memory=auto, stream from disk above this decoded size", min=1)
    skip_bad: bool = option(False, "skip unreadable image files with a warning instead of stopping")
    num_workers: int = option(2, "DataLoader workers when streaming from disk", min=0)


@dataclass
class ModelConfig:
    arch: str = option("dcgan", "dcgan (resize+conv G) | dcgan_tconv (transposed-conv G) | seed (the seed's 28x28 nets)",
                       choices=("dcgan", "dcgan_tconv", "seed"))
    z_dim: int = option(100, "latent size", min=1)
    conditional: str = option("auto", "condition on labels: auto (when the data has labels) | true | false",
                              choices=("auto", "true", "false"))
    g_channels: int = option(32, "generator width: channels of its last hidden layer", min=4)
    d_channels: int = option(32, "discriminator width: channels of its first layer", min=4)
    embed_dim: int = option(32, "size of the generator's label embedding (conditional models)", min=1)
    spectral_norm: bool = option(True, "spectral normalisation on the discriminator's layers")


@dataclass
class TrainConfig:
    steps: int = option(3000, "total optimisation steps (one D and one G update each)", min=1)
    batch_size: int = option(64, "images per process per step; the global batch is this times the world size", min=1)
    lr_g: float = option(2e-4, "generator learning rate (Adam)", min=0)
    lr_d: float = option(2e-4, "discriminator learning rate (Adam)", min=0)
    beta1: float = option(0.5, "Adam beta1", min=0)
    beta2: float = option(0.999, "Adam beta2", min=0)
    precision: str = option("auto", "fp32 | bf16 | fp16 | auto (bf16 where the hardware runs it natively, else fp32)",
                            choices=("auto", "fp32", "bf16", "fp16"))
    loss: str = option("hinge", "GAN loss: bce (non-saturating, the seed's) | hinge", choices=("bce", "hinge"))
    r1_gamma: float = option(0.0, "R1 gradient penalty weight on real images; 0 disables", min=0)
    r1_every: int = option(16, "apply the R1 penalty every this many steps (lazy regularisation)", min=1)
    ema_decay: float = option(0.999, "decay of the generator's exponential moving average; 0 disables it", min=0)
    diffaug: str = option("color,translation,cutout",
                          "DiffAugment policies applied to real and fake images before D; 'none' disables")
    seed: int = option(0, "random seed (each rank adds its rank)", min=0)
    grad_clip: float = option(0.0, "clip gradient norm of each network to this; 0 disables", min=0)
    max_nonfinite_steps: int = option(25, "stop after this many consecutive steps with non-finite gradients", min=1)
    threads: int = option(0, "CPU threads per process; 0 = cores divided by local processes", min=0)
    channels_last: bool = option(True, "run convolutions in channels_last memory format")
    compile: bool = option(False, "torch.compile the networks (worth it on GPUs for long runs)")


@dataclass
class LogConfig:
    every: int = option(50, "log scalars every this many steps", min=1)
    image_every: int = option(500, "write a sample grid (fixed noise, one row per class) every this many steps; 0 disables", min=0)
    metric_every: int = option(0, "compute FD and KID on a small sample every this many steps; 0 disables", min=0)
    metric_samples: int = option(1000, "images generated for the in-training FD/KID", min=10)
    progress: bool = option(True, "show a progress bar on rank 0")


@dataclass
class CkptConfig:
    every: int = option(500, "write a checkpoint every this many steps (and always at the end)", min=1)
    keep: int = option(3, "how many step_NNNNNNN.pt checkpoints to keep besides last.pt", min=0)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    ckpt: CkptConfig = field(default_factory=CkptConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        for key, spec, value in _leaves(self):
            choices, lower, upper = spec.metadata["choices"], spec.metadata["min"], spec.metadata["max"]
            if choices is not None and value not in choices:
                raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{key}: {value!r} is not a finite number")
            if lower is not None and value < lower:
                raise ConfigError(f"{key}: {value!r} is below the minimum {lower}")
            if upper is not None and value > upper:
                raise ConfigError(f"{key}: {value!r} is above the maximum {upper}")
        if not 0 <= self.train.ema_decay < 1:
            raise ConfigError(f"train.ema_decay: {self.train.ema_decay} must be in [0, 1)")
        if self.model.arch == "seed" and self.data.resolution != 28:
            raise ConfigError(f"data.resolution: model.arch=seed is a 28x28 network, got {self.data.resolution}")
        base_resolution(self.data.resolution)  # raises for sizes the DCGAN family cannot build
        diffaug_policies(self.train.diffaug)
        return self


def base_resolution(resolution: int) -> tuple[int, int]:
    """Split a side length into (base, number of 2x upsamplings): 32 -> (4, 3), 28 -> (7, 2)."""
    base, doublings = resolution, 0
    while base > 7 and base % 2 == 0:
        base, doublings = base // 2, doublings + 1
    if not 4 <= base <= 7 or doublings < 1:
        raise ConfigError(f"data.resolution: {resolution} is not 4..7 times a power of two (e.g. 16, 28, 32, 64)")
    return base, doublings


DIFFAUG_POLICIES = ("color", "translation", "cutout")


def diffaug_policies(text: str) -> list[str]:
    """Parse train.diffaug ('color,translation' or 'none') into a list of policies."""
    if text.strip().lower() in ("", "none"):
        return []
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in DIFFAUG_POLICIES]
    if unknown:
        raise ConfigError(f"train.diffaug: unknown policy {unknown[0]!r} (choose from {', '.join(DIFFAUG_POLICIES)} or none)")
    return names


# ----------------------------------------------------------------------------- loading


def _leaves(cfg: Config):
    """Yield (dotted key, dataclass field, value) for every leaf of the config."""
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        for spec in dataclasses.fields(sub):
            yield f"{section.name}.{spec.name}", spec, getattr(sub, spec.name)


def _field_types(cls) -> dict[str, type]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, tp: type) -> Any:
    """Check a value read from YAML against the field's type; ints are accepted where floats are."""
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, bool):  # YAML reads `false` as a bool; the str fields spell it out
        return str(value).lower()
    is_bool_for_number = tp in (int, float) and isinstance(value, bool)
    if is_bool_for_number or not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _unknown(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def all_keys() -> list[str]:
    return [key for key, _, _ in _leaves(Config())]


def _set(cfg: Config, key: str, value: Any) -> None:
    parts = key.split(".")
    if len(parts) != 2 or key not in all_keys():
        raise _unknown(key, all_keys())
    section = getattr(cfg, parts[0])
    tp = _field_types(type(section))[parts[1]]
    setattr(section, parts[1], _coerce(key, value, tp))


def apply_dict(cfg: Config, values: dict, prefix: str = "") -> Config:
    """Apply a nested dict (a YAML file or a checkpoint's config) on top of cfg."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(values).__name__}")
    for name, value in values.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            if not hasattr(cfg, str(name)) or prefix:
                raise _unknown(key, all_keys())
            apply_dict(cfg, value, prefix=f"{key}.")
        else:
            _set(cfg, key, value)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """'train.steps=100' -> ('train.steps', 100): the value as YAML would read it, strings kept raw."""
    import yaml

    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form dotted.key=value")
    if key not in all_keys():
        raise _unknown(key, all_keys())
    section, name = key.split(".")
    if _field_types(type(getattr(Config(), section)))[name] is str:
        return key, raw
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"{key}: cannot read value {raw!r}") from None


def read_yaml(path: str | Path) -> dict:
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return values or {}


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None) -> Config:
    """Defaults, then `base` (a resumed run's config), then the file, then the overrides."""
    cfg = Config()
    if base is not None:
        apply_dict(cfg, base)
    if path is not None:
        apply_dict(cfg, read_yaml(path))
    for text in overrides:
        _set(cfg, *parse_override(text))
    return cfg.validate()


def dump_yaml(cfg: Config) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def _show(value: Any) -> str:
    """A default as one would type it in YAML."""
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def help_config() -> str:
    """Every key with its type, default and doc: the text of `ganaug train --help-config`."""
    rows = []
    for key, spec, value in _leaves(Config()):
        section = key.split(".")[0]
        tp = _field_types(type(getattr(Config(), section)))[spec.name].__name__
        rows.append((key, tp, _show(value), spec.metadata["doc"]))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{k:<{widths[0]}}  {t:<{widths[1]}}  {d:<{widths[2]}}  {doc}" for k, t, d, doc in rows)
