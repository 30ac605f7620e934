"""`AugmentSettings`: everything that decides augment's output, checked once before any work.

Its `fingerprint()` is what a resumed run must share with the first one (where to write, which
shard, how many jobs and the progress bar change how it runs, not what it writes).
`gan_config_for` resolves the GAN config augment works with, at the labelled images' own side unless
the user sets one.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ganaug.errors import UserError
from ganaug.evaluate.policies import AUTO_POLICIES, POLICIES
from ganaug.sampler.layout import Shard

log = logging.getLogger(__name__)

SYNTHETIC_CHOICES = ("auto", "never")


def gan_config_for(labelled: str, model: str | None, config_path: str | None, overrides: list[str]):
    """The GAN config (and so the resolution of every image augment writes): defaults < the study's
    GAN defaults < the labelled images' own side, where they are square, of one size and of a size
    a generator can have < the config file < key=value overrides. With --model the model's side
    rules (augment reads it from the model)."""
    from ganaug.config import load_config, parse_override, read_yaml
    from ganaug.data import native_side
    from ganaug.evaluate.study import STUDY_GAN_DEFAULTS

    base = copy.deepcopy(STUDY_GAN_DEFAULTS)
    in_file = read_yaml(config_path) if config_path is not None else {}
    data_section = in_file.get("data") if isinstance(in_file, dict) else None
    given = any(parse_override(text)[0] == "data.resolution" for text in overrides) or (
        isinstance(data_section, dict) and "resolution" in data_section)
    if model is None and not given:
        side = native_side(labelled)
        if side is not None and _generator_side(side):
            base["data"]["resolution"] = side
            log.info("data.resolution=%d: the labelled images' own side", side)
        elif side is not None or Path(labelled).is_dir():  # else unreadable: the loader says why, once
            what = f"{side}x{side}, a side no generator has" if side else "not all square and of one size"
            log.warning("the labelled images are %s: augment works at data.resolution=%d; set data.resolution "
                        "for your images", what, base["data"]["resolution"])
    return load_config(config_path, overrides, base=base)


def _generator_side(side: int) -> bool:
    from ganaug.models import SIZE_BOUNDS, base_resolution

    low, high = SIZE_BOUNDS["resolution"]
    try:
        base_resolution(side)
    except ValueError:
        return False
    return low <= side <= high


@dataclass(frozen=True)
class AugmentSettings:
    labelled: str  # any data source kind, with labels
    out: str
    unlabelled: str | None = None  # any source kind; its labels, if any, are not used
    model: str | None = None  # a ganaug generator ONNX; None: augment trains one per fold and one on all labels
    synthetic: str = "auto"  # auto: synthetic images where the estimate says they help; never: no generator at all
    seed: int = 0  # folds, classifiers, latents: the same seed gives the same output
    folds: int | None = None  # stratified folds of the labelled images; None: 5, or fewer where a class has fewer
    seeds: int = 1  # classifier seeds per fold (averaged within the fold)
    policy: str = "auto"  # classical augmentation: one of policies.POLICIES, or auto (chosen on the folds)
    gan_config: dict = field(default_factory=dict)  # the resolved GAN config (ganaug.config)
    gan_steps: int = 2000
    gan_processes: int = 1  # >1: each generator trains under torchrun with this many DDP processes
    synthetic_per_class: int = 500  # synthetic images kept per class (counted after the filter)
    synthetic_share: float = 0.5  # the synthetic images' share of every batch (the manifest's weights)
    filter_confidence: float = 0.9  # the teacher's probability of its class a synthetic image needs
    pseudo_label_confidence: float = 0.9  # ... and an unlabelled image, to be kept with that label
    classifier_steps: int = 400
    classifier_min_epochs: int = 60  # at least this many passes over the labelled images
    teacher_steps: int = 1200  # steps of each FixMatch teacher (the same floor of passes; docs/augment.md)
    estimate_unlabelled: int = 2000  # unlabelled images the FixMatch teachers train on, the estimate pseudo-labels
    work_dir: str | None = None  # default: DIR.work beside DIR
    shard: Shard = Shard()
    jobs: int = 0  # estimate units at a time, one thread each; 0: one per core (or train.threads)
    progress: bool = True

    def __post_init__(self):
        checks = (
            (self.synthetic in SYNTHETIC_CHOICES, f"--synthetic must be one of {', '.join(SYNTHETIC_CHOICES)}"),
            (self.policy in (*POLICIES, "auto"), f"--policy must be auto or one of {', '.join(POLICIES)}"),
            (self.folds is None or 2 <= self.folds <= 100, f"--folds must be in 2..100, got {self.folds}"),
            (1 <= self.seeds <= 100, f"--seeds must be in 1..100, got {self.seeds}"),
            (0 <= self.jobs <= 1024, f"--jobs must be in 0..1024, got {self.jobs}"),
            (1 <= self.gan_processes <= 1024, f"--gan-processes must be in 1..1024, got {self.gan_processes}"),
            (0 < self.synthetic_share < 1, f"--synthetic-share must be in (0, 1), got {self.synthetic_share}"),
            (0 < self.filter_confidence <= 1, f"--min-confidence must be in (0, 1], got {self.filter_confidence}"),
            (0 < self.pseudo_label_confidence <= 1,
             f"--pseudo-label-confidence must be in (0, 1], got {self.pseudo_label_confidence}"),
            (1 <= self.synthetic_per_class <= 10**6, f"--synthetic-per-class must be in 1..10^6, got "
                                                     f"{self.synthetic_per_class}"),
            (1 <= self.estimate_unlabelled <= 10**6, f"--estimate-unlabelled must be in 1..10^6, got "
                                                     f"{self.estimate_unlabelled}"),
            (not (self.model and self.synthetic == "never"), "--model and --synthetic never contradict each other"),
        )
        for holds, message in checks:
            if not holds:
                raise UserError(message)

    @property
    def out_path(self) -> Path:
        return Path(self.out)

    @property
    def work_path(self) -> Path:
        from ganaug.augment.output import work_dir_for

        return Path(self.work_dir) if self.work_dir else work_dir_for(self.out_path)

    @property
    def policies(self) -> tuple[str, ...]:
        return AUTO_POLICIES if self.policy == "auto" else (self.policy,)

    @property
    def uses_generator(self) -> bool:
        return self.synthetic != "never"

    def fingerprint(self) -> dict:
        values = dataclasses.asdict(self)
        for key in ("out", "work_dir", "shard", "jobs", "progress"):
            values.pop(key)
        gan = {section: dict(keys) for section, keys in values["gan_config"].items() if section not in ("log", "ckpt")}
        if gan:
            gan["train"].pop("threads", None)
            gan["data"].pop("num_workers", None)
        values["gan_config"] = gan
        return values
