"""Typed configuration: nested dataclasses, a YAML file, dotted ``key=value`` overrides.

Precedence is command line > file > defaults (a resumed run's saved config sits between the
defaults and the file). Every field carries a one-line doc (``--help-config`` prints them and the
README's reference is that list); unknown keys, wrong types and out-of-range values are errors
that name the key. Field types say what a value may be: ``Literal`` for a choice, ``bool | None``
for true / false / auto (None), ``list[...]`` for several choices. Torch-free: ``ganaug.cli``
imports this module.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ganaug.errors import UserError
from ganaug.models import ARCHS, SIZE_BOUNDS, base_resolution


class ConfigError(UserError):
    """A config key is unknown, has the wrong type or an out-of-range value."""


Arch = Literal[ARCHS]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Loss = Literal["hinge", "bce"]
AugmentPolicy = Literal["color", "translation", "cutout"]
Channels = Literal[0, 1, 3]

MAX_SEED = 2**31 - 1  # seeds are offset per rank and epoch; this keeps every derived seed in range
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few hundred bytes; anything this big is not one


def option(default: Any, doc: str, *, min: float | None = None, max: float | None = None,  # noqa: A002
           below: float | None = None) -> Any:
    """A config field with its one-line doc and the bounds `validate` checks (`below`: exclusive)."""
    meta = {"doc": doc, "min": min, "max": max, "below": below}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    source: str = option("digits", "digits | mnist5k | animal_shape | mnist | fashion_mnist | cifar10 | an image folder | a .npz file")
    unlabelled: str = option("", "more images without labels for the GAN (any source kind); '' for none")
    root: str = option("data", "where torchvision datasets (mnist, fashion_mnist, cifar10) are looked for")
    download: bool = option(False, "let torchvision download its dataset into data.root when missing")
    resolution: int = option(32, "image side in pixels: 4..7 times a power of two up to 1024, e.g. 16, 28, 32, 64",
                             min=SIZE_BOUNDS["resolution"][0], max=SIZE_BOUNDS["resolution"][1])
    channels: Channels = option(0, "image channels, 1 or 3; 0 takes them from the data")
    in_memory: bool | None = option(None, "hold the dataset as one tensor on the device; auto: when it fits")
    max_memory_mb: int = option(4096, "with in_memory=auto, stream from disk above this decoded size",
                                min=1, max=2**30)
    skip_bad: bool = option(False, "skip unreadable image files with a warning instead of stopping")
    num_workers: int = option(2, "DataLoader workers when streaming from disk", min=0, max=256)


@dataclass
class ModelConfig:
    arch: Arch = option("dcgan", "dcgan (resize+conv G) | dcgan_tconv (transposed-conv G) | resnet (residual G "
                                 "with class-conditional BatchNorm, residual D) | article28 (the DCGAN article's 28x28 nets)")
    z_dim: int = option(100, "latent size", min=SIZE_BOUNDS["z_dim"][0], max=SIZE_BOUNDS["z_dim"][1])
    conditional: bool | None = option(None, "condition on labels; auto: when the data has labels")
    g_channels: int = option(32, "generator width: channels of its last hidden layer",
                             min=SIZE_BOUNDS["g_channels"][0], max=SIZE_BOUNDS["g_channels"][1])
    d_channels: int = option(32, "discriminator width: channels of its first layer",
                             min=SIZE_BOUNDS["d_channels"][0], max=SIZE_BOUNDS["d_channels"][1])
    embed_dim: int = option(32, "size of the generator's label embedding (conditional models)",
                            min=SIZE_BOUNDS["embed_dim"][0], max=SIZE_BOUNDS["embed_dim"][1])
    spectral_norm: bool = option(True, "spectral normalisation on the discriminator's layers")


@dataclass
class TrainConfig:
    steps: int = option(3000, "total optimisation steps (one D and one G update each)", min=1, max=10**9)
    batch_size: int = option(64, "images per process per step; the global batch is this times the world size",
                             min=1, max=65536)
    lr_g: float = option(2e-4, "generator learning rate (Adam)", min=0, max=1)
    lr_d: float = option(2e-4, "discriminator learning rate (Adam)", min=0, max=1)
    beta1: float = option(0.5, "Adam beta1", min=0, below=1)
    beta2: float = option(0.999, "Adam beta2", min=0, below=1)
    precision: Precision = option("auto", "fp32 | bf16 | fp16 | auto (bf16 where the hardware runs it natively, "
                                          "else fp32)")
    loss: Loss = option("hinge", "GAN loss: hinge | bce (non-saturating)")
    r1_gamma: float = option(0.0, "R1 gradient penalty weight on the real images before augmentation; 0 disables",
                             min=0, max=1e6)
    r1_every: int = option(16, "apply the R1 penalty every this many steps (lazy regularisation)", min=1, max=10**6)
    ema_decay: float = option(0.999, "generator EMA decay per 64 training images (all ranks); 0 disables it",
                              min=0, below=1)
    ema_rampup: float = option(0.05, "EMA ramp-up: its half-life is at most this share of the images seen; 0 off",
                               min=0, max=1)
    diffaug: list[AugmentPolicy] = option(["color", "translation", "cutout"],
                                          "DiffAugment policies applied to real and fake images before D; none: []")
    ada_target: float = option(0.0, "adaptive augmentation: the share of real images D may score positive before "
                                    "its strength p rises (0.6 is typical); 0 keeps p = 1", min=0, below=1)
    ada_kimg: float = option(20.0, "adaptive augmentation speed: thousands of images for p to go from 0 to 1",
                             min=0.001, max=1e6)
    lecam_weight: float = option(0.0, "LeCam regularisation of D's scores (Tseng et al. 2021); 0 disables",
                                 min=0, max=1e6)
    consistency_weight: float = option(0.0, "consistency regularisation of D under augmentation (bCR); 0 disables",
                                       min=0, max=1e6)
    diversity_weight: float = option(0.1, "mode-seeking term on G (MSGAN, Mao et al. 2019): two latents of one "
                                          "class must give different images; 0 disables", min=0, max=1e6)
    unlabelled_weight: float = option(1.0, "weight of the unconditional term on data.unlabelled images",
                                      min=0, max=1e6)
    seed: int = option(0, "random seed (each rank derives its own)", min=0, max=MAX_SEED)
    grad_clip: float = option(0.0, "clip gradient norm of each network to this; 0 disables", min=0)
    max_nonfinite_steps: int = option(25, "stop after this many consecutive steps with non-finite gradients",
                                      min=1, max=10**6)
    threads: int = option(0, "CPU threads per process; 0 = cores divided by local processes", min=0, max=1024)
    channels_last: bool = option(True, "run convolutions in channels_last memory format")
    compile: bool = option(False, "torch.compile the networks (worth it on GPUs for long runs)")


@dataclass
class LogConfig:
    every: int = option(50, "log scalars every this many steps", min=1)
    image_every: int = option(500, "write a sample grid (fixed noise, one row per class) every this many steps; "
                                   "0 disables", min=0)
    metric_every: int = option(0, "compute FD and KID on a small sample every this many steps; 0 disables", min=0)
    metric_samples: int = option(1000, "images generated for the in-training FD/KID", min=10, max=100_000)
    progress: bool = option(True, "show a progress bar on rank 0")


@dataclass
class CkptConfig:
    every: int = option(500, "write a checkpoint every this many steps (and always at the end)", min=1)
    keep: int = option(3, "how many step_NNNNNNN.pt checkpoints to keep besides last.pt", min=0, max=10**6)


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
            _check_bounds(key, value, spec.metadata)
        if self.model.arch == "article28" and self.data.resolution != 28:
            raise ConfigError(f"data.resolution: model.arch=article28 is a 28x28 network, got {self.data.resolution}")
        try:
            base_resolution(self.data.resolution)
        except ValueError as exc:
            raise ConfigError(f"data.resolution: {exc}") from None
        return self


def _check_bounds(key: str, value: Any, meta: dict) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: {value!r} is not a finite number")
    if meta["min"] is not None and value < meta["min"]:
        raise ConfigError(f"{key}: {value!r} is below the minimum {meta['min']}")
    if meta["max"] is not None and value > meta["max"]:
        raise ConfigError(f"{key}: {value!r} is above the maximum {meta['max']}")
    if meta["below"] is not None and value >= meta["below"]:
        raise ConfigError(f"{key}: {value!r} must be below {meta['below']}")


# ----------------------------------------------------------------------------- types


def _leaves(cfg: Config):
    """Yield (dotted key, dataclass field, value) for every leaf of the config."""
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        for spec in dataclasses.fields(sub):
            yield f"{section.name}.{spec.name}", spec, getattr(sub, spec.name)


def _field_type(key: str):
    section, name = key.split(".")
    return typing.get_type_hints(type(getattr(Config(), section)))[name]


def _is_optional_bool(tp) -> bool:
    return isinstance(tp, types.UnionType) and set(typing.get_args(tp)) == {bool, type(None)}


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return "choice"
    if _is_optional_bool(tp):
        return "bool|auto"
    if typing.get_origin(tp) is list:
        return "list"
    return tp.__name__


_TRUE, _FALSE = ("true", "yes", "on"), ("false", "no", "off")


def _coerce(key: str, value: Any, tp) -> Any:
    """Check a value from YAML or the command line against the field's type, converting where the
    meaning is unambiguous: ints for floats, 'auto' for None, a comma string for a list."""
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        if value not in choices or isinstance(value, bool):
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if _is_optional_bool(tp):
        if value is None or isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return None
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ConfigError(f"{key}: expected true, false or auto, got {value!r}")
    if typing.get_origin(tp) is list:
        (item_type,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [] if value.strip().lower() in ("", "none") else [p.strip() for p in value.split(",") if p.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        items = [_coerce_item(key, item, item_type) for item in value]
        if len(set(items)) != len(items):
            raise ConfigError(f"{key}: {value!r} names an entry twice")
        return items
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    is_bool_for_number = tp in (int, float) and isinstance(value, bool)
    if is_bool_for_number or not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _coerce_item(key: str, item: Any, tp) -> Any:
    choices = typing.get_args(tp)
    if item not in choices:
        raise ConfigError(f"{key}: unknown entry {item!r} (choose from {', '.join(choices)}, or none)")
    return item


# ----------------------------------------------------------------------------- loading


def _unknown(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def all_keys() -> list[str]:
    return [key for key, _, _ in _leaves(Config())]


def _set(cfg: Config, key: str, value: Any) -> None:
    if key.count(".") != 1 or key not in all_keys():
        raise _unknown(key, all_keys())
    section, name = key.split(".")
    setattr(getattr(cfg, section), name, _coerce(key, value, _field_type(key)))


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
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form dotted.key=value")
    if key not in all_keys():
        raise _unknown(key, all_keys())
    tp = _field_type(key)
    text_choice = typing.get_origin(tp) is Literal and all(isinstance(c, str) for c in typing.get_args(tp))
    if tp is str or text_choice or typing.get_origin(tp) is list or _is_optional_bool(tp):
        return key, raw  # read as typed: a name, a comma list, true/false/auto
    shown = raw if len(raw) <= 60 else f"{raw[:40]}...({len(raw)} characters)"
    return key, _safe_yaml(raw, f"{key}: cannot read value {shown!r}")


def _strict_loader():
    """PyYAML's SafeLoader without aliases (a 1 KB alias bomb expands without bound), with
    duplicate keys refused (YAML would silently keep the last of two `train:` sections) and keys
    that are plain values (`? [a, b]` makes a list a key, which no dict can hold)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise ConfigError(f"YAML aliases (*name) are not allowed in a config (line {mark.line + 1})")
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise ConfigError(f"a key must be a plain name, not a {key_node.id} "
                                      f"(line {key_node.start_mark.line + 1})")
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise ConfigError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def _safe_yaml(text: str, what: str):
    import yaml

    loader = _strict_loader()(text)  # what yaml.load does, with our SafeLoader subclass
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what}: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"{what}: nested too deeply") from None
    except ValueError as exc:  # Python's own bound: an integer of more than 4,300 digits
        raise ConfigError(f"{what}: {str(exc).split(';')[0]}") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES // 1024} KiB: not a config")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {data[exc.start]:#04x} at offset "
                          f"{exc.start})") from None
    values = _safe_yaml(text, f"config file {path} is not valid YAML")
    return values if values is not None else {}


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None) -> Config:
    """Defaults, then `base` (e.g. a resumed run's config.yaml, read_yaml), then the file, then the overrides."""
    cfg = Config()
    if base is not None:
        apply_dict(cfg, base)
    if path is not None:
        apply_dict(cfg, read_yaml(path))
    for text in overrides:
        _set(cfg, *parse_override(text))
    return cfg.validate()


def config_from_dict(values: dict) -> Config:
    return apply_dict(Config(), values).validate()


def _yaml_value(value: Any) -> Any:
    return "auto" if value is None else value


def dump_yaml(cfg: Config) -> str:
    import yaml

    values = {section: {k: _yaml_value(v) for k, v in keys.items()} for section, keys in cfg.to_dict().items()}
    return yaml.safe_dump(values, sort_keys=False)


def _show(value: Any) -> str:
    """A default as one would type it in YAML."""
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(value) or "none"
    return repr(value) if isinstance(value, str) else str(value)


def help_config() -> str:
    """Every key with its type, default and doc: the text of `ganaug train --help-config`."""
    rows = [(key, _type_name(_field_type(key)), _show(value), spec.metadata["doc"])
            for key, spec, value in _leaves(Config())]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{k:<{widths[0]}}  {t:<{widths[1]}}  {d:<{widths[2]}}  {doc}" for k, t, d, doc in rows)
