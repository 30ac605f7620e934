"""The augmentation study: does synthetic data help a classifier that has K labelled images per class?

Protocol (docs/evaluation.md):
1. Split the real data into train and held-out test, stratified and seeded.
2. For each K, keep K labelled images per class of train and write them, and only them, to an
   .npz file. The GAN is trained with `data.source=` that file, so it provably sees nothing else:
   no test image, no label the classifier would not have.
3. Train, export and sample the GAN with the library calls behind `ganaug train / export / sample`
   (`ganaug.train.run`, `ganaug.export.export_model`, `ganaug.sampler.write_samples`).
4. Train the same small classifier on (a) real only, (b) real + classical augmentation,
   (c) real + synthetic, (d) real + classical + synthetic, (e) synthetic only, for several seeds,
   and measure accuracy on the held-out test split. With unlabelled images, four more arms (f)-(i):
   `ARM_RECIPES` says what each arm's classifier trains on.

Every finished unit (a GAN per K, its quality metrics, an arm/seed result) is recorded in
OUT/state.json and skipped when the study runs again; an interrupted GAN resumes from its last.pt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from ganaug import train
from ganaug.config import Config, config_from_dict, dump_yaml
from ganaug.errors import Stopped, UserError
from ganaug.evaluate.classifier import (
    TrainingSet,
    TrainSettings,
    accuracy,
    export_classifier_onnx,
    predict_proba,
    train_classifier,
)
from ganaug.export import export_model
from ganaug.files import write_atomic
from ganaug.nested import changed_leaves
from ganaug.sampler import ImageFilter, Sampler, SampleRequest, write_samples
from ganaug.sampler.sampler import check_truncation
from ganaug.train import with_overrides

log = logging.getLogger(__name__)

STATE_FORMAT = 1


@dataclass(frozen=True)
class ArmRecipe:
    """What one arm's classifier trains on. Every arm trains the same classifier, seeded alike."""

    real: bool = True  # the K labelled images; False: the labelled GAN's whole output alone, unfiltered
    augment: bool = False  # classical augmentation (of the real images; see warp_synthetic)
    synthetic: str | None = None  # "labelled" or "semi": that GAN's images, through the filter
    # Self-training: the unlabelled images that this arm's classifier labels with confidence, as more
    # real images. Arm (b)'s classifier is the no-GAN teacher; arm (d)'s has seen the synthetic images.
    pseudo_labels_from: str | None = None


ARM_RECIPES = {
    "real": ArmRecipe(),
    "real+classical": ArmRecipe(augment=True),
    "real+synthetic": ArmRecipe(synthetic="labelled"),
    "real+classical+synthetic": ArmRecipe(augment=True, synthetic="labelled"),
    "synthetic": ArmRecipe(real=False),  # the generator's own score (CAS)
    # With --unlabelled: self-training is the no-GAN baseline of that setting; the semi-synthetic images
    # come from the GAN that also saw the unlabelled images; the synthetic-taught self-training takes its
    # pseudo-labels from arm (d)'s classifier.
    "self-training": ArmRecipe(augment=True, pseudo_labels_from="real+classical"),
    "real+classical+semi-synthetic": ArmRecipe(augment=True, synthetic="semi"),
    "self-training+semi-synthetic": ArmRecipe(augment=True, synthetic="semi", pseudo_labels_from="real+classical"),
    "synthetic-taught self-training": ArmRecipe(augment=True, pseudo_labels_from="real+classical+synthetic"),
}


def uses_synthetic(arm: str) -> bool:
    """Whether an arm's classifier, or the teacher of its pseudo-labels, saw a GAN's images."""
    recipe = ARM_RECIPES[arm]
    return (not recipe.real or recipe.synthetic is not None
            or (recipe.pseudo_labels_from is not None and uses_synthetic(recipe.pseudo_labels_from)))


ARMS = ("real", "real+classical", "real+synthetic", "real+classical+synthetic", "synthetic")
UNLABELLED_ARMS = tuple(arm for arm in ARM_RECIPES if arm not in ARMS)
TEACHER_ARM = "real+classical"  # its classifier filters the synthetic images and pseudo-labels for the GAN
ALL = None  # K = all labelled training images
# Every arm trains at least 400 steps, or this many passes over the K labelled images where that is
# more: with all labels and half of each batch synthetic, 400 steps show each real image only about
# 10 times (docs/evaluation.md, "All labels: the classifier's budget").
CLASSIFIER_MIN_EPOCHS = 60

# The study's GAN settings, under the user's config file and key=value overrides (see
# docs/evaluation.md for how they were chosen). 16x16: digits are 8x8 natively, the CPU is slow.
STUDY_GAN_DEFAULTS = {
    "data": {"resolution": 16},
    "model": {"g_channels": 32, "d_channels": 32},
    "train": {"batch_size": 64, "loss": "hinge", "ema_decay": 0.999, "diffaug": ["color", "translation", "cutout"]},
    "log": {"image_every": 500},
}
METRIC_SAMPLES = 5000  # synthetic images measured against the real training split
# The protocol's version, in every study's fingerprint: a study of another version is not resumed, as
# its arms meant other things. 2: the filter is `ganaug sample --filter` with the teacher exported to
# ONNX (before, a bf16 torch teacher; those states carry "filter_path" instead). 3: classical
# augmentation warps the real images of the mixed arms and leaves the synthetic ones as drawn. 4: the
# pseudo-labelling semi GAN sees every unlabelled image without labels, not only those the teacher
# could not label (FD 1.9 -> 1.0 at K = 10).
PROTOCOL = 4
UNLABELLED_SETTINGS = ("semi_gan", "pseudo_label_confidence")
QUICK = {"ks": [5, 20], "seeds": 2, "gan_steps": 1200}
FULL = {"ks": [5, 10, 20, ALL], "seeds": 3, "gan_steps": 3000}


def k_name(k: int | None) -> str:
    return "all" if k is ALL else str(k)


@dataclass
class StudySettings:
    """Everything that decides the study's numbers (K values and seeds only add or drop units): the one
    spelling of the study's settings. `ganaug evaluate study` parses its options into these fields
    (their defaults are here alone), `fingerprint()` is what a resumed study must share, and the
    report's protocol is their `asdict`."""

    ks: list  # ints, or None for all
    seeds: int
    gan_steps: int
    gan_config: dict  # the resolved GAN config (data.source = the real data the study splits)
    test_fraction: float = 0.3
    split_seed: int = 0
    synthetic_per_class: int = 2000
    synthetic_fraction: float = 0.5  # share of each classifier batch drawn from synthetic images
    truncation: float = 0.0
    # Classical augmentation in the mixed arms warps the real images alone; True warps the synthetic
    # ones too (protocol 2's rule, kept to measure it against).
    warp_synthetic: bool = False
    classifier_steps: int = 400  # every arm of a K trains this many steps, or
    classifier_min_epochs: float = CLASSIFIER_MIN_EPOCHS  # this many passes over its labelled images if more
    unlabelled: bool = False  # the rest of the train split, without labels: a second GAN and three more arms
    # Keep synthetic images the teacher gives their class with this probability (0: all); how 0.9 was
    # chosen is in docs/evaluation.md.
    filter_confidence: float = 0.9
    pseudo_label_confidence: float = 0.9  # self-training keeps unlabelled images the teacher is this sure of
    # How the semi-supervised GAN uses the unlabelled images: all of them without labels
    # ("unconditional"), and with "pseudo" also the teacher's confident pseudo-labels as labelled data.
    # "pseudo" is the default: its GAN covers more of the data (recall 0.50 vs 0.32 on split 0).
    semi_gan: str = "pseudo"

    def __post_init__(self):
        if not 0 < self.test_fraction < 1:
            raise UserError("--test-fraction must be strictly between 0 and 1")
        check_truncation(self.truncation)  # the sampler's rule, checked before any work

    @property
    def classifier(self) -> TrainSettings:
        return TrainSettings(steps=self.classifier_steps, min_epochs=self.classifier_min_epochs)

    @classmethod
    def option_names(cls) -> set[str]:
        """The fields a command line may set by name (the rest are derived: K values, the GAN config)."""
        return {f.name for f in fields(cls)} - {"ks", "gan_config"}

    def fingerprint(self) -> dict:
        """The settings a resumed study must share with the first run (logging, checkpoint cadence
        and thread counts change how it runs, not its numbers)."""
        values = asdict(self)
        values.pop("ks"), values.pop("seeds")
        gan = {section: dict(keys) for section, keys in values["gan_config"].items() if section not in ("log", "ckpt")}
        gan["train"].pop("threads", None)
        gan["data"].pop("num_workers", None)
        values["gan_config"] = gan
        values["protocol"] = PROTOCOL
        return decisive(values)


def decisive(fingerprint: dict) -> dict:
    """A fingerprint less the settings that decide nothing in it: those of the unlabelled arms in a
    study without them (so a changed default of theirs does not refuse a study, old or new)."""
    if fingerprint.get("unlabelled"):
        return fingerprint
    return {key: value for key, value in fingerprint.items() if key not in UNLABELLED_SETTINGS}


# ------------------------------------------------------------------------------ data protocol


def stratified_split(labels: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, test indices): each class split in the same proportion, seeded."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels.numpy())
    if counts[counts > 0].min() < 2:  # scikit-learn's own errors for these are tracebacks
        raise UserError(f"class {int(np.flatnonzero(counts == 1)[0])} has a single image: the study holds out part "
                        "of every class for testing and needs at least 2 images per class")
    n_test = math.ceil(test_fraction * len(labels))
    classes = int((counts > 0).sum())
    if min(n_test, len(labels) - n_test) < classes:
        raise UserError(f"--test-fraction {test_fraction} splits the {len(labels)} images into {len(labels) - n_test} "
                        f"for training and {n_test} held out; each side needs at least one image of each of the "
                        f"{classes} classes")
    index = np.arange(len(labels))
    train, test = train_test_split(index, test_size=test_fraction, stratify=labels.numpy(), random_state=seed)
    return torch.as_tensor(np.sort(train)), torch.as_tensor(np.sort(test))


def k_per_class(labels: torch.Tensor, candidates: torch.Tensor, k: int | None, seed: int) -> torch.Tensor:
    """K indices per class out of `candidates` (all of them for K = all), seeded."""
    if k is ALL:
        return candidates
    order = candidates[torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))]
    chosen = []
    for c in labels.unique().tolist():
        of_class = order[labels[order] == c]
        if len(of_class) < k:
            log.warning("class %s has only %d training images for K=%d; using all of them", c, len(of_class), k)
        chosen.append(of_class[:k])
    return torch.cat(chosen).sort().values


def write_labelled_npz(path: Path, images: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> None:
    """images uint8 NCHW -> an .npz `ganaug train` reads (images NHWC, labels, class_names), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: np.savez(f, images=images.permute(0, 2, 3, 1).numpy(), labels=labels.numpy(),
                                          class_names=np.array(class_names)))


def image_hashes(images: torch.Tensor) -> set[str]:
    """One sha256 per image (uint8 NCHW or NHWC, as long as both sides use the same layout)."""
    return {hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images.numpy()}


def read_synthetic(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The .npz shards of a finished `ganaug sample --format npz` run: uint8 NCHW, int64 labels."""
    info = json.loads((folder / "sample_info.json").read_text())
    if not info.get("complete"):
        raise UserError(f"{folder} is an unfinished sample set")
    images, labels = [], []
    for shard in sorted(folder.glob("shard_*.npz")):
        with np.load(shard, allow_pickle=False) as arrays:
            images.append(torch.from_numpy(arrays["images"]).permute(0, 3, 1, 2).contiguous())
            labels.append(torch.from_numpy(arrays["labels"]).long())
    return torch.cat(images), torch.cat(labels)


# ------------------------------------------------------------------------------ state file


class StudyState:
    """OUT/state.json: the settings and every finished unit; rewritten atomically after each unit."""

    def __init__(self, path: Path, settings: dict):
        self.path = path
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise UserError(f"{path} is unreadable ({exc}); move it aside to start the study afresh") from None
            if not (isinstance(saved, dict) and isinstance(saved.get("units", {}), dict)):
                raise UserError(f"{path} is not a study state (expected an object with settings and units); "
                                "move it aside to start the study afresh")
            saved_settings = decisive(saved.get("settings") or {})
            protocol = saved_settings.get("protocol", "unknown (it names none)")
            if protocol != settings["protocol"]:
                raise UserError(f"{path.parent} holds a study of protocol {protocol}, whose arms mean other things "
                                f"than this ganaug's (protocol {settings['protocol']}, docs/evaluation.md); "
                                "use another --out")
            if saved_settings != settings:
                changed = [key for key, _, _ in changed_leaves(saved_settings, settings)]
                raise UserError(f"{path.parent} holds a study with other settings ({', '.join(changed[:5])}); "
                                "use another --out, or the same settings to resume it")
            self.units = saved.get("units", {})
            self.settings = settings
        else:
            self.units = {}
            self.settings = settings
            self._write()  # from now on, a run with other settings is refused

    def _write(self) -> None:
        state = {"format": STATE_FORMAT, "settings": self.settings, "units": self.units}
        write_atomic(self.path, json.dumps(state, indent=1))

    def get(self, key: str):
        return self.units.get(key)

    def record(self, key: str, value) -> None:
        self.units[key] = value
        self._write()


# ------------------------------------------------------------------------------ the study


class Study:
    def __init__(self, out_dir: Path, settings: StudySettings, device: torch.device | None = None):
        from ganaug.data import load_dataset

        self.out = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.device = device or torch.device("cpu")
        self.cfg = config_from_dict(settings.gan_config)
        self.data = load_dataset(self.cfg.data)
        if self.data.labels is None or not self.data.in_memory:
            raise UserError(f"data.source {self.cfg.data.source!r}: the study needs labelled images that fit in "
                            "memory")
        self.class_names = self.data.class_names
        if len(self.class_names) < 2:  # a classifier of one class is right by construction: no verdict
            raise UserError(f"data.source {self.cfg.data.source!r} has {len(self.class_names)} class; the study "
                            "measures a classifier and needs at least 2")
        self.train_index, self.test_index = stratified_split(self.data.labels, settings.test_fraction,
                                                             settings.split_seed)
        self.state = StudyState(out_dir / "state.json", settings.fingerprint())
        write_atomic(out_dir / "gan_config.yaml", dump_yaml(self.cfg))
        # per K: each GAN is trained and measured, each arm runs once per seed
        self.units_total = sum(2 * (1 + self.has_unlabelled(k)) + settings.seeds * len(self.arms_of(k))
                               for k in settings.ks)
        self.units_done = 0
        self._classifiers: dict[str, tuple[torch.nn.Module, dict]] = {}  # arm -> (net, record) of one (K, seed)
        self._classifiers_of: tuple | None = None

    # -- pieces of data ----------------------------------------------------------------------

    @property
    def test_images(self) -> torch.Tensor:
        return self.data.images[self.test_index]

    @property
    def test_labels(self) -> torch.Tensor:
        return self.data.labels[self.test_index]

    def subset(self, k: int | None) -> torch.Tensor:
        return k_per_class(self.data.labels, self.train_index, k, self.settings.split_seed)

    def subset_npz(self, k: int | None) -> Path:
        """The labelled images for K, and nothing else: the GAN's only data."""
        path = self.out / "data" / f"k{k_name(k)}.npz"
        if not path.is_file():
            index = self.subset(k)
            write_labelled_npz(path, self.data.images[index], self.data.labels[index], self.class_names)
        return path

    def unlabelled_npz(self, k: int | None) -> Path:
        """The train split's images outside the K subset, without labels: what a user with few labels
        and many unlabelled images has."""
        path = self.out / "data" / f"k{k_name(k)}_unlabelled.npz"
        if not path.is_file():
            index = self.unlabelled_index(k)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, lambda f: np.savez(f, images=self.data.images[index].permute(0, 2, 3, 1).numpy()))
        return path

    def pseudo_labelled_npz(self, k: int | None) -> Path:
        """For a GAN that learns from pseudo-labels: the K labelled images plus the unlabelled ones the
        seed-0 teacher is sure of, with its labels."""
        labelled = self.out / "data" / f"k{k_name(k)}_pseudo.npz"
        if not labelled.is_file():
            index = self.unlabelled_index(k)
            images = self.data.images[index]
            confidence, labels = predict_proba(self.teacher(k, 0), images).max(1)
            sure = confidence >= self.settings.pseudo_label_confidence
            subset = self.subset(k)
            write_labelled_npz(labelled, torch.cat([self.data.images[subset], images[sure]]),
                               torch.cat([self.data.labels[subset], labels[sure]]), self.class_names)
        return labelled

    def unlabelled_index(self, k: int | None) -> torch.Tensor:
        labelled = set(self.subset(k).tolist())
        return torch.as_tensor([i for i in self.train_index.tolist() if i not in labelled], dtype=torch.int64)

    def has_unlabelled(self, k: int | None) -> bool:
        """Whether the study has unlabelled images at K: asked for, and some left outside the K subset
        (none at K = all, nor where K takes every training image of every class)."""
        return self.settings.unlabelled and len(self.unlabelled_index(k)) > 0

    def arms_of(self, k: int | None) -> tuple[str, ...]:
        return ARMS + (UNLABELLED_ARMS if self.has_unlabelled(k) else ())

    def gan_dir(self, k: int | None, semi: bool = False) -> Path:
        return self.out / f"gan_k{k_name(k)}{'_unlabelled' if semi else ''}"

    def generator(self, k: int | None, semi: bool = False) -> Path:
        """The exported GAN of K (semi: the one that also saw the unlabelled images)."""
        return self.gan_dir(k, semi) / "generator.onnx"

    # -- units -------------------------------------------------------------------------------

    def _progress(self, text: str) -> None:
        self.units_done += 1
        log.info("[%d/%d] %s", self.units_done, self.units_total, text)

    def train_gan(self, k: int | None, semi: bool = False) -> Path:
        """Train (or resume) and export the GAN for K (semi: also on the unlabelled images); returns
        the ONNX model."""
        key = f"gan/k{k_name(k)}{'u' if semi else ''}"
        run_dir, model = self.gan_dir(k, semi), self.generator(k, semi)
        what = f"K={k_name(k)}{' + unlabelled' if semi else ''}"
        if self.state.get(key) and model.is_file():
            self._progress(f"{what}: GAN already trained")
            return model
        npz = self.subset_npz(k)
        n_images = len(self.subset(k))
        batch_size = min(self.cfg.train.batch_size, n_images)  # K=5 x 10 classes is fewer than a batch
        log.info("%s: training the GAN on %d labelled images (%s), %d steps", what, n_images, npz,
                 self.settings.gan_steps)
        start = time.perf_counter()
        data = {"source": str(npz), "unlabelled": ""}
        if semi:
            # D's unconditional term learns the images from every unlabelled one: given only those the
            # teacher could not label, the atypical ones, the GAN drew worse (see PROTOCOL 4).
            data["unlabelled"] = str(self.unlabelled_npz(k))
            if self.settings.semi_gan == "pseudo":
                data["source"] = str(self.pseudo_labelled_npz(k))
        cfg = with_overrides(self.cfg, data=data, train={"steps": self.settings.gan_steps, "batch_size": batch_size})
        result = train.run(cfg, run_dir)
        if not result.completed:  # a signal stopped the GAN gracefully (saved): stop the study too
            raise Stopped(result.stop_signal)
        steps = result.step
        export_model(run_dir, model, force=True)
        self.state.record(key, {"steps": steps, "images": n_images, "batch_size": batch_size,
                                "seconds": round(time.perf_counter() - start, 1)})
        self._progress(f"{what}: GAN trained and exported ({steps} steps)")
        return model

    @staticmethod
    def sample_folder(model: Path, seed: int, filtered: bool = False) -> Path:
        return model.parent / f"samples_seed{seed}{'_filtered' if filtered else ''}"

    def synthetic(self, model: Path, seed: int, teacher: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The synthetic set of a model for a seed, written by the sampler (which resumes itself); with a
        teacher (an ONNX classifier), only the images it gives their class with `filter_confidence`:
        `ganaug sample --filter TEACHER --min-confidence filter_confidence`, what a user gets."""
        folder = self.sample_folder(model, seed, filtered=teacher is not None)
        info = folder / "sample_info.json"
        if not (info.is_file() and json.loads(info.read_text()).get("complete")):
            sampler = Sampler.load(model)
            classes = tuple(range(sampler.meta.num_classes))
            image_filter = None if teacher is None else ImageFilter.load(
                teacher, sampler.meta, self.settings.filter_confidence)
            write_samples(sampler, SampleRequest(
                out_dir=str(folder), n=self.settings.synthetic_per_class * len(classes), classes=classes, seed=seed,
                format="npz", truncation=self.settings.truncation, overwrite=True, progress=False),
                filter=image_filter)
        return read_synthetic(folder)

    def gan_metrics(self, k: int | None, model: Path, semi: bool = False) -> None:
        """FD, KID, precision/recall, per-class FD and memorisation of the GAN for K, with figures."""
        from ganaug.evaluate import report
        from ganaug.evaluate.features import load_or_train_domain_features
        from ganaug.evaluate.metrics import quality_metrics

        name = f"k{k_name(k)}{'u' if semi else ''}"
        key = f"metrics/{name}"
        if self.state.get(key):
            self._progress(f"{name}: GAN metrics already measured")
            return
        train_images, train_labels = self.data.images[self.train_index], self.data.labels[self.train_index]
        extractor = load_or_train_domain_features(train_images, train_labels, len(self.class_names),
                                                  self.out / "features", seed=self.settings.split_seed)
        fake, fake_labels = self.synthetic(model, seed=0)
        # Image i has class i % classes, so the first images are class-balanced. A bounded count keeps
        # the k-NN distances cheap and the metrics comparable between studies of other sizes.
        fake, fake_labels = fake[:METRIC_SAMPLES], fake_labels[:METRIC_SAMPLES]
        seen = self.data.images[self.subset(k)]
        metrics, memo = quality_metrics(extractor, train_images, train_labels, fake, fake_labels,
                                        self.class_names, train_u8=seen, unseen_u8=self.test_images)
        figures = self.out / "figures"
        report.sample_grid(fake, fake_labels, self.class_names, figures / f"samples_{name}.png",
                           title=f"Synthetic samples, GAN trained on K={k_name(k)} per class"
                                 f"{' and the unlabelled images' if semi else ''}")
        report.nearest_neighbour_grid(fake, seen, memo, figures / f"nearest_{name}.png",
                                      title=f"Closest synthetic images (left) and their nearest training image "
                                            f"(right), K={k_name(k)}")
        self.state.record(key, metrics)
        self._progress(f"{name}: FD {metrics['fd']:.2f}, precision {metrics['precision']:.2f}, "
                       f"recall {metrics['recall']:.2f}")

    def teacher(self, k: int | None, seed: int) -> torch.nn.Module:
        """The classifier of arm (b) for this seed (real + classical augmentation): it filters synthetic
        images and pseudo-labels for self-training and for the semi-supervised GAN."""
        return self.classifier(k, TEACHER_ARM, seed)[0]

    def teacher_onnx(self, k: int | None, seed: int) -> Path:
        """The teacher of (K, seed) as an ONNX classifier of the sampler's filter contract
        (OUT/teachers/k<K>_seed<S>.onnx), exported once and reused."""
        path = self.out / "teachers" / f"k{k_name(k)}_seed{seed}.onnx"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            channels, height, width = self.data.images.shape[1:]
            export_classifier_onnx(self.teacher(k, seed), path, (height, width, channels), self.class_names)
        return path

    def pseudo_labelled(self, k: int | None, seed: int,
                        by: str = TEACHER_ARM) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The unlabelled images that arm `by`'s classifier is sure of, with its labels (classic
        self-training), and the share of those labels that are right (the study knows the truth; a user
        would not)."""
        index = self.unlabelled_index(k)
        images = self.data.images[index]
        teacher = self.teacher(k, seed) if by == TEACHER_ARM else self.classifier(k, by, seed)[0]
        confidence, labels = predict_proba(teacher, images).max(1)
        keep = confidence >= self.settings.pseudo_label_confidence
        right = float((labels[keep] == self.data.labels[index][keep]).float().mean()) if keep.any() else float("nan")
        return images[keep], labels[keep], right

    def filtered(self, k: int | None, model: Path, seed: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The synthetic set, less the images the teacher does not give their class with
        `filter_confidence` (all of them when 0); and the share kept. The sampler filters, with the
        teacher exported to ONNX: the study measures the set `ganaug sample --filter` gives a user."""
        if self.settings.filter_confidence <= 0:
            images, labels = self.synthetic(model, seed)
            return images, labels, 1.0
        images, labels = self.synthetic(model, seed, teacher=self.teacher_onnx(k, seed))
        info = json.loads((self.sample_folder(model, seed, filtered=True) / "sample_info.json").read_text())
        return images, labels, info["filter"]["images_kept"] / info["images"]

    def classifier(self, k: int | None, arm: str, seed: int) -> tuple[torch.nn.Module, dict]:
        """An arm's classifier for (K, seed), and what its data was (pseudo-labels, the filter's share),
        kept while that (K, seed) lasts: arm (b)'s and (d)'s also teach other arms. Training is
        seeded, so a resumed study that retrains a teacher gets the same net."""
        if self._classifiers_of != (k, seed):
            self._classifiers, self._classifiers_of = {}, (k, seed)
        if arm not in self._classifiers:
            self._classifiers[arm] = self._train_arm(k, arm, seed)
        return self._classifiers[arm]

    def _train_arm(self, k: int | None, arm: str, seed: int) -> tuple[torch.nn.Module, dict]:
        s, recipe, record = self.settings, ARM_RECIPES[arm], {}
        if not recipe.real:
            data = TrainingSet(*self.synthetic(self.generator(k), seed))
        else:
            index = self.subset(k)
            images, labels = self.data.images[index], self.data.labels[index]
            if recipe.pseudo_labels_from:
                extra_images, extra_labels, right = self.pseudo_labelled(k, seed, by=recipe.pseudo_labels_from)
                images, labels = torch.cat([images, extra_images]), torch.cat([labels, extra_labels])
                record |= {"pseudo_labelled": len(extra_labels), "pseudo_label_accuracy": round(right, 4)}
            data = TrainingSet(images, labels)
            if recipe.synthetic:
                synthetic_images, synthetic_labels, kept = self.filtered(
                    k, self.generator(k, semi=recipe.synthetic == "semi"), seed)
                record["synthetic_kept"] = round(kept, 4)
                if len(synthetic_images):
                    data = TrainingSet(images, labels, synthetic_images, synthetic_labels,
                                       synthetic_fraction=s.synthetic_fraction, warp_synthetic=s.warp_synthetic)
                else:
                    log.warning("K=%s seed %d %s: the filter kept no synthetic image; real images only", k_name(k),
                                seed, arm)
        classifier = train_classifier(data, len(self.class_names), self.classifier_budget(k), seed=seed,
                                      augment=recipe.augment, device=self.device)
        return classifier, record

    def classifier_budget(self, k: int | None) -> TrainSettings:
        """Every arm of a K trains for the same steps: --classifier-steps, or --classifier-min-epochs passes
        over the K labelled images where that is more (K = all), whatever else an arm adds to them."""
        return self.settings.classifier.budget(len(self.subset(k)))

    def arm(self, k: int | None, arm: str, seed: int) -> None:
        key = f"result/k{k_name(k)}/{arm}/seed{seed}"
        if self.state.get(key) is not None:
            self._progress(f"K={k_name(k)} seed {seed} {arm}: done before")
            return
        start = time.perf_counter()
        classifier, record = self.classifier(k, arm, seed)
        acc = accuracy(classifier, self.test_images, self.test_labels)
        self.state.record(key, {"accuracy": acc, "seconds": round(time.perf_counter() - start, 2),
                                "classifier_steps": self.classifier_budget(k).steps, **record})
        self._progress(f"K={k_name(k)} seed {seed} {arm}: held-out accuracy {100 * acc:.1f}%")

    def run(self) -> dict:
        start = time.perf_counter()
        for k in self.settings.ks:
            self.gan_metrics(k, self.train_gan(k))
            if self.has_unlabelled(k):
                self.gan_metrics(k, self.train_gan(k, semi=True), semi=True)
            for seed in range(self.settings.seeds):
                for arm in self.arms_of(k):
                    self.arm(k, arm, seed)
        log.info("study finished in %.0f s (this run)", time.perf_counter() - start)
        return self.results()

    def _gan_names(self) -> list[str]:
        names = []
        for k in self.settings.ks:
            names.append(k_name(k))
            if self.has_unlabelled(k):
                names.append(f"{k_name(k)}u")
        return names

    def results(self) -> dict:
        """Everything the report needs, from the state file."""
        s = self.settings
        accuracies = {}
        for k in s.ks:
            accuracies[k_name(k)] = {arm: [self.state.get(f"result/k{k_name(k)}/{arm}/seed{seed}")["accuracy"]
                                           for seed in range(s.seeds)] for arm in self.arms_of(k)}
        return {
            "protocol": {
                "data_source": self.cfg.data.source, "resolution": self.cfg.data.resolution,
                "class_names": self.class_names, "n_train": len(self.train_index), "n_test": len(self.test_index),
                **asdict(s), "ks": [k_name(k) for k in s.ks],
                "classifier": {**asdict(s.classifier), "widths": list(s.classifier.widths)},
            },
            "gan": {name: {**self.state.get(f"gan/k{name}"), "metrics": self.state.get(f"metrics/k{name}")}
                    for name in self._gan_names()},
            "accuracy_by_seed": accuracies,
        }


def resolve_gan_config(config_path: str | None, overrides: list[str]) -> Config:
    """Defaults < the study's GAN defaults < the user's config file < key=value overrides."""
    from ganaug.config import load_config

    return load_config(config_path, overrides, base=STUDY_GAN_DEFAULTS)
