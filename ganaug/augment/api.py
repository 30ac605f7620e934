"""`ganaug augment` as a library: `run(AugmentSettings(...)) -> AugmentResult`.

1. Estimate, on the user's labels: stratified folds of the labelled images; in each fold the same
   classifier trains on the fold's labelled images with classical augmentation (the policy chosen
   on the folds when --policy auto), then with each ingredient: pseudo-labels of the unlabelled
   images by a FixMatch-trained teacher (the fold's labelled images and the unlabelled ones),
   synthetic images of a generator that saw only the fold's labelled images (filtered by the
   fold's classical classifier), and both (pseudo-labels and filter then from the FixMatch teacher,
   so that "both" differs from "pseudo-labels" by the synthetic images alone). Accuracy on the
   held-out fold; paired differences (estimate.py). Those units run --jobs at a time (folds.py).
2. Decide (estimate.py's two rules): pseudo-labels where they are not worse on average, synthetic
   images only where their interval is above zero.
3. Write: the labelled images, and the kept ingredients made with a teacher trained on every
   labelled image (FixMatch-style where pseudo-labels are kept; and a generator trained on every
   labelled image, or --model), into DIR (output.py); teacher.onnx; report.md and report.json.

Why a FixMatch teacher: a student of the plain classifier's confident pseudo-labels lost 1 to 4
points to that classifier on held-out MNIST-5k, while FixMatch gained 6 to 8 (docs/evaluation.md).
augment can only hand its gain on as data, and a student of the FixMatch teacher's pseudo-labels
kept it (validation images of the train side, docs/evaluation.md "What was tried").

Every finished unit is recorded in the work directory's state.json (and the teachers and generators
it hands on in WORK/folds), so an interrupted run resumes;
`--shard I/N` splits the pseudo-labelling of a large unlabelled pool across processes (the
estimate and the teacher are made once, under a lock, by whichever process comes first).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ganaug import safejson
from ganaug.augment import output
from ganaug.augment.estimate import (
    MEASURABLY_BETTER,
    NOT_WORSE_ON_AVERAGE,
    Difference,
    corrected_difference,
    stratified_folds,
)
from ganaug.augment.folds import (
    BOTH,
    CLASSICAL,
    PSEUDO,
    STUDENT,
    SYNTHETIC,
    FoldData,
    Unit,
    best_policy,
    measure,
    policy_key,
)
from ganaug.augment.pool import UnlabelledPool
from ganaug.augment.recipes import Recipes, classifier_device
from ganaug.augment.settings import AugmentSettings
from ganaug.config import config_from_dict
from ganaug.data import load_dataset
from ganaug.errors import UserError
from ganaug.evaluate.classifier import SmallCNN, export_classifier_onnx, predict_proba
from ganaug.files import sha256_of, write_atomic
from ganaug.train.dist import cpu_threads

log = logging.getLogger(__name__)

STATE_FORMAT = 3  # 2: pseudo-labels from a FixMatch teacher; 3: every estimate unit on one thread
MAX_STATE_CHARS = 64 << 20  # a state holds a few numbers per classifier trained: far below this
MAX_STATE_DEPTH = 8
TEACHER = "teacher"  # work/teacher.pt (what shards reload) and DIR/teacher.onnx (the user's)
DEFAULT_FOLDS = 5


@dataclass(frozen=True)
class AugmentResult:
    out: Path
    complete: bool  # False: other shards of the unlabelled pool have not finished
    report: dict


def run(settings: AugmentSettings) -> AugmentResult:
    out, work = settings.out_path, settings.work_path
    output.claim(out, work)
    with _locked(work / "lock"):
        job = _Job(settings)
        job.prepare()
    job.write_pool_part()
    with _locked(work / "lock"):
        return job.finish()


@contextlib.contextmanager
def _locked(path: Path):
    """One process at a time prepares and finishes (shards wait here, then reuse what it made)."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError as exc:  # a file system without flock (some network mounts)
            raise UserError(f"cannot lock {path}: {exc.strerror or exc}; put --work-dir on a local disk") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _State:
    """work/state.json: the settings and every finished unit, rewritten atomically after each."""

    def __init__(self, path: Path, fingerprint: dict):
        self.path = path
        self.units: dict = {}
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
                if len(text) > MAX_STATE_CHARS:
                    raise ValueError(f"longer than {MAX_STATE_CHARS >> 20} Mi characters")
                saved = safejson.loads(text, max_depth=MAX_STATE_DEPTH)
                _check_units(saved)
            except (OSError, ValueError) as exc:
                raise UserError(f"{path} is not a ganaug augment state ({exc}); delete the work directory "
                                f"{path.parent} and --out to start afresh") from None
            if saved.get("format") != STATE_FORMAT or saved.get("settings") != json.loads(json.dumps(fingerprint)):
                raise UserError(f"{path.parent} holds a run of ganaug augment with other settings; use another "
                                "--out (or the same settings to resume it)")
            self.units = saved["units"]
        self.fingerprint = fingerprint
        self._write()  # from now on, a run with other settings is refused

    def _write(self) -> None:
        write_atomic(self.path, json.dumps({"format": STATE_FORMAT, "settings": self.fingerprint,
                                            "units": self.units}, indent=1))

    def get(self, key: str):
        return self.units.get(key)

    def record(self, key: str, value) -> None:
        self.units[key] = value
        self._write()


def _check_units(saved) -> None:
    """The state is a file from disk, so it is checked like input before it steers anything: the
    accuracies are numbers in [0, 1], and the prepared output's decision and teacher are what
    augment wrote (a shard reads them to decide what to write)."""
    if not isinstance(saved, dict) or not isinstance(saved.get("units"), dict):
        raise ValueError("not an object with settings and units")
    for key, value in saved["units"].items():
        if key.startswith(("policy/", "arm/")) and not (
                isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1):
            raise ValueError(f"unit {key!r} is not an accuracy")
    prepared = saved["units"].get("prepared")
    if prepared is not None and not (
            isinstance(prepared, dict) and isinstance(prepared.get("decision"), dict)
            and all(isinstance(prepared["decision"].get(key), bool) for key in ("pseudo", "synthetic"))
            and isinstance(prepared.get("teacher_sha256"), str) and len(prepared["teacher_sha256"]) == 64):
        raise ValueError("its prepared output is not one augment wrote")


class _Job:
    def __init__(self, settings: AugmentSettings):
        from ganaug.evaluate.api import use_all_cores

        self.s = settings
        self.out, self.work = settings.out_path, settings.work_path
        self.gan = config_from_dict(settings.gan_config)
        use_all_cores(self.gan.train.threads)
        resolution, channels = self.gan.data.resolution, self.gan.data.channels
        self.model = Path(settings.model) if settings.model else None
        if self.model is not None:
            from ganaug.sampler import Sampler

            meta = Sampler.load(self.model).meta
            height, width, channels = meta.image_shape
            if height != width:
                raise UserError(f"--model {self.model}: its images are {height}x{width}; augment needs square images")
            resolution = height
        data_cfg = replace(self.gan.data, source=settings.labelled, resolution=resolution, channels=channels,
                           in_memory=True)
        self.data = load_dataset(data_cfg, key="--labelled")
        if self.data.labels is None:
            raise UserError(f"--labelled {settings.labelled} has no labels (a flat folder or an .npz without "
                            "labels); give class sub-folders or labels, and pass unlabelled images as --unlabelled")
        self.class_names = list(self.data.class_names)
        if len(self.class_names) < 2:  # a classifier of one class is right by construction: nothing to estimate
            raise UserError(f"--labelled {settings.labelled} has {len(self.class_names)} class; augment estimates "
                            "what helps a classifier and needs at least 2")
        present = torch.bincount(self.data.labels, minlength=len(self.class_names))  # none is 0 (load_dataset)
        if self.model is not None and list(meta.class_names) != self.class_names:
            raise UserError(f"--model {self.model} draws classes {list(meta.class_names)[:10]}, the labelled images "
                            f"have {self.class_names[:10]}: a generator of the same classes, in the same order, is needed")
        self.pool = (UnlabelledPool.load(settings.unlabelled, data_cfg, self.data.channels)
                     if settings.unlabelled else None)
        self.jobs = settings.jobs or cpu_threads(self.gan.train.threads, 1)  # 0: one unit per core
        log.info("the estimate's classifiers train on %s, %d at a time", classifier_device().type, self.jobs)
        self._check_memory(resolution * resolution * self.data.channels)
        self.state = _State(self.work / output.STATE, settings.fingerprint())
        self.tree = output.Tree(self.out, self.class_names)
        # Five folds, or as many as the rarest class has images (at least 2: stratified_folds says so).
        self.folds = settings.folds or max(2, min(DEFAULT_FOLDS, int(present.min())))
        self.image_shape = (resolution, resolution, self.data.channels)
        self.recipes = Recipes(settings, self.gan, tuple(self.class_names), self.data.channels, self.model)

    def _check_memory(self, image_bytes: int) -> None:
        """The synthetic set and the estimate's unlabelled images are held whole, once here and once
        in each of the estimate's worker processes: refuse counts that cannot fit before the first
        classifier is trained, not after."""
        from ganaug.memory import check_fits

        classes, copies = len(self.class_names), self.jobs + (self.jobs > 1)
        fewer_jobs = f", or fewer --jobs than {self.jobs}" if copies > 1 else ""
        if self.s.uses_generator:
            per_class = self.s.synthetic_per_class
            check_fits(per_class * classes, copies * (2 * image_bytes + 32),
                       f"--synthetic-per-class {per_class}: {per_class} x {classes} classes of synthetic images",
                       lambda fits: f"use --synthetic-per-class {max(1, fits // classes)} or less{fewer_jobs}")
        if self.pool is not None:
            count = min(self.s.estimate_unlabelled, len(self.pool))
            check_fits(count, copies * 2 * image_bytes, f"--estimate-unlabelled {count}: that many unlabelled images",
                       lambda fits: f"use --estimate-unlabelled {max(1, fits)} or less{fewer_jobs}")

    # -- 1. the estimate ---------------------------------------------------------------------

    @functools.cached_property
    def pool_sample(self) -> torch.Tensor:
        """The unlabelled images the estimate and the teacher train on (at most --estimate-unlabelled,
        a seeded subsample of the pool, held in memory)."""
        return self.pool.images(self.pool.subsample(self.s.estimate_unlabelled, self.s.seed))

    def _arms(self) -> tuple[str, ...]:
        arms = [CLASSICAL]
        if self.pool is not None:
            arms.append(PSEUDO)
        if self.s.uses_generator:
            arms.append(SYNTHETIC)
            if self.pool is not None:
                arms.append(BOTH)
        return tuple(arms)

    def estimate(self) -> dict:
        """Per arm, the held-out accuracy of every fold (the mean over its seeds); the policy chosen."""
        data = FoldData(self.recipes, self.data.images, self.data.labels,
                        stratified_folds(self.data.labels.numpy(), self.folds, self.s.seed),
                        self.pool_sample if self.pool is not None else None, self.work / "folds")
        policies, arms, seeds = self.s.policies, self._arms(), self.s.seeds
        measure(data, policies, arms, seeds, self.state, self.jobs, self.s.progress)

        def fold_mean(key) -> list[float]:  # the mean over the classifier seeds of each fold
            return [float(np.mean([self.state.get(key(fold, r)) for r in range(seeds)])) for fold in range(self.folds)]

        scores = {p: [self.state.get(policy_key(p, f, r)) for f in range(self.folds) for r in range(seeds)]
                  for p in policies}
        policy = best_policy(policies, scores)
        per_fold = {CLASSICAL: fold_mean(lambda f, r: policy_key(policy, f, r))}
        for arm in arms[1:]:
            per_fold[arm] = fold_mean(lambda f, r, arm=arm: Unit(STUDENT, f, r, arm=arm).key)
        return {"policy": policy, "policy_accuracy": {p: float(np.mean(v)) for p, v in scores.items()},
                "folds": self.folds, "per_fold": per_fold, "held_out_share": 1 / self.folds}

    # -- 2. the decision ---------------------------------------------------------------------

    @staticmethod
    def decide(estimate: dict) -> dict:
        """Start from the labelled images with classical augmentation; add pseudo-labels where the
        estimate's mean gain is not negative, synthetic images only where its interval is above zero
        (estimate.py)."""
        per_fold, share = estimate["per_fold"], estimate["held_out_share"]

        def diff(better: str, worse: str) -> Difference:
            return corrected_difference(better, worse, per_fold[better], per_fold[worse], share)

        differences, rules = {}, {}
        use_pseudo = use_synthetic = False
        if PSEUDO in per_fold:
            differences["pseudo"], rules["pseudo"] = diff(PSEUDO, CLASSICAL), NOT_WORSE_ON_AVERAGE
            use_pseudo = differences["pseudo"].keeps(NOT_WORSE_ON_AVERAGE)
        if SYNTHETIC in per_fold:
            differences["synthetic"] = diff(BOTH, PSEUDO) if use_pseudo else diff(SYNTHETIC, CLASSICAL)
            rules["synthetic"] = MEASURABLY_BETTER
            use_synthetic = differences["synthetic"].keeps(MEASURABLY_BETTER)
        recipe = {(False, False): CLASSICAL, (True, False): PSEUDO, (False, True): SYNTHETIC,
                  (True, True): BOTH}[use_pseudo, use_synthetic]
        if recipe != CLASSICAL:
            differences["recipe"] = diff(recipe, CLASSICAL)
        return {"recipe": recipe, "pseudo": use_pseudo, "synthetic": use_synthetic, "rules": rules,
                "differences": {name: d.as_dict() for name, d in differences.items()}}

    # -- 3. the output -----------------------------------------------------------------------

    def _save_teacher(self, model: SmallCNN) -> str:
        """work/teacher.pt (what shards reload) and DIR/teacher.onnx (the user's); the ONNX file's sha256."""
        self.recipes.save(model, self.work / f"{TEACHER}.pt")
        return sha256_of(export_classifier_onnx(model, self.out / f"{TEACHER}.onnx", self.image_shape,
                                                self.class_names))

    def _load_teacher(self) -> SmallCNN:
        return self.recipes.load(self.work / f"{TEACHER}.pt", f"delete {self.work / output.STATE} and rerun")

    def prepare(self) -> None:
        if self.state.get("prepared"):
            return
        start = time.perf_counter()
        if self.state.get("estimate") is None:
            self.state.record("estimate", self.estimate())
        estimate = self.state.get("estimate")
        decision = self.decide(estimate)
        policy, seed, n = estimate["policy"], self.s.seed, len(self.data.labels)
        log.info("recipe: %s (policy %s)", decision["recipe"], policy)

        # The teacher filters the synthetic images and makes the pseudo-labels: FixMatch-trained where
        # pseudo-labels are kept (as in the estimate's arms), the classical classifier otherwise.
        teacher = (self.recipes.fixmatch(self.data.images, self.data.labels, self.pool_sample, seed)
                   if decision["pseudo"] else self.recipes.train(self.data.images, self.data.labels, n, seed, policy))
        teacher_sha = self._save_teacher(teacher)
        rows = [self.tree.row("real", int(label), i, str(i), None, "")
                for i, label in enumerate(self.data.labels.tolist())]
        for i, row in enumerate(rows):
            self.tree.write(row["path"], self.data.images[i].permute(1, 2, 0).numpy())
        synthetic_info = None
        if decision["synthetic"]:
            generator = self.recipes.generator(self.data.images, self.data.labels, self.work / "final",
                                               progress=self.s.progress)
            generator_sha = sha256_of(generator)
            kept, _ = self.recipes.synthetic(generator, teacher)
            for image, label, score, index in zip(kept.images, kept.labels, kept.scores, kept.indices, strict=True):
                row = self.tree.row("synthetic", int(label), int(index), str(int(index)), float(score),
                                    f"generator:{generator_sha}")
                self.tree.write(row["path"], image)
                rows.append(row)
            synthetic_info = {"generator": str(generator), "generator_sha256": generator_sha, "drawn": kept.drawn,
                              "kept": len(kept.labels)}
        output.write_rows(self.work / "prepared.csv", rows)
        self.state.record("prepared", {"decision": decision, "teacher": "fixmatch" if decision["pseudo"] else "classical",
                                       "teacher_sha256": teacher_sha, "synthetic": synthetic_info,
                                       "seconds": round(time.perf_counter() - start, 1)})

    def _part(self, shard) -> Path:
        return self.work / f"pool_part_{shard.index}_of_{shard.count}.csv"

    def write_pool_part(self) -> None:
        """This shard's pseudo-labelled images (every image i with i % count == index)."""
        prepared = self.state.get("prepared")
        shard = self.s.shard
        if not prepared["decision"]["pseudo"] or self._part(shard).is_file():
            return
        from tqdm import tqdm

        teacher, model = self._load_teacher(), f"teacher:{prepared['teacher_sha256']}"
        indices = np.arange(shard.index, len(self.pool), shard.count)
        rows = []
        with tqdm(total=len(indices), unit="img", desc="pseudo-labels", disable=not self.s.progress) as bar:
            for part, images in self.pool.chunks(indices):
                confidence, labels = predict_proba(teacher, images).max(1)
                for row_index in torch.nonzero(confidence >= self.s.pseudo_label_confidence).flatten().tolist():
                    i = int(part[row_index])
                    row = self.tree.row("pseudo", int(labels[row_index]), i, self.pool.origin(i),
                                        float(confidence[row_index]), model)
                    self.tree.write(row["path"], images[row_index].permute(1, 2, 0).numpy())
                    rows.append(row)
                bar.update(len(part))
        output.write_rows(self._part(shard), rows)

    def finish(self) -> AugmentResult:
        prepared = self.state.get("prepared")
        rows = output.read_rows(self.work / "prepared.csv")
        waiting = []
        if prepared["decision"]["pseudo"]:
            count = self.s.shard.count
            for index in range(count):
                part = self._part(replace(self.s.shard, index=index))
                if part.is_file():
                    rows += output.read_rows(part)
                else:
                    waiting.append(index)
        if waiting:
            log.info("shard %s done; waiting for shards %s", self.s.shard, waiting[:10])
            return AugmentResult(self.out, False, {})
        from ganaug.augment.report import build_report, write_report

        rows = output.with_weights(sorted(rows, key=output.row_order), self.s.synthetic_share)
        output.write_rows(self.out / output.MANIFEST, rows)
        report = build_report(self.s, self.state.get("estimate"), prepared, rows, self.class_names,
                              n_unlabelled=len(self.pool) if self.pool is not None else 0)
        write_report(self.out, report)
        self.state.record("complete", True)
        return AugmentResult(self.out, True, report)
