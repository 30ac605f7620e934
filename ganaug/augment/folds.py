"""The estimate's work, in units that run side by side.

Per fold of the labelled images and classifier seed (`repeat`):
- CLASSIFIER: the classical classifier of one candidate policy. Its held-out accuracy chooses the
  policy; the chosen one's classifier filters the synthetic arm's images.
- FIXMATCH: the FixMatch teacher whose pseudo-labels the pseudo-label arms add.
- GENERATOR (per fold, not per seed): a GAN trained on the fold's labelled images alone.
- STUDENT: one per ingredient arm, the classifier on the fold's images plus that ingredient.
The CLASSIFIER and STUDENT units are measured on the held-out fold.

Units hand classifiers and generators to each other as files in the work directory; the same files
let an interrupted run resume. The scheduler starts every unit whose inputs exist, --jobs at a time,
longest kinds first, each on one thread in a worker process. These networks are small: one process
with two threads kept a 2-core CPU about 140% busy, two single-threaded units keep it 200% busy. One
thread per unit also means a unit's numbers do not depend on --jobs or on the machine's core count
(the thread count changes a classifier's last bits).
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ganaug.augment.children import die_with_parent, sigterm_stops
from ganaug.augment.recipes import Recipes
from ganaug.errors import UserError
from ganaug.evaluate.classifier import SmallCNN, accuracy

CLASSICAL, PSEUDO, SYNTHETIC, BOTH = "classical", "pseudo-labels", "synthetic", "pseudo-labels+synthetic"
CLASSIFIER, FIXMATCH, GENERATOR, STUDENT = "classifier", "fixmatch", "generator", "student"
LONGEST_FIRST = (GENERATOR, FIXMATCH, CLASSIFIER, STUDENT)


@dataclass(frozen=True)
class Unit:
    kind: str
    fold: int
    repeat: int = 0
    policy: str = ""  # a CLASSIFIER's policy; a STUDENT's is the chosen one, set when it can start
    arm: str = ""  # a STUDENT's arm: PSEUDO, SYNTHETIC or BOTH

    @property
    def key(self) -> str | None:
        """Where the state records its held-out accuracy (None: it measures nothing)."""
        if self.kind == CLASSIFIER:
            return policy_key(self.policy, self.fold, self.repeat)
        if self.kind == STUDENT:
            return f"arm/{self.arm}/fold{self.fold}/seed{self.repeat}"
        return None

    @property
    def teacher(self) -> Unit:
        """The classifier that makes a STUDENT's ingredient: the FixMatch teacher labels and filters
        where pseudo-labels are in, so that BOTH differs from PSEUDO by the synthetic images alone."""
        if self.arm == SYNTHETIC:
            return Unit(CLASSIFIER, self.fold, self.repeat, self.policy)
        return Unit(FIXMATCH, self.fold, self.repeat)


def policy_key(policy: str, fold: int, repeat: int) -> str:
    return f"policy/{policy}/fold{fold}/seed{repeat}"


@dataclass
class FoldData:
    """Everything a unit reads; sent once to each worker."""

    recipes: Recipes
    images: torch.Tensor  # the labelled images, uint8 [N, C, H, W]
    labels: torch.Tensor
    folds: list[tuple[np.ndarray, np.ndarray]]  # (train indices, held-out indices) per fold
    unlabelled: torch.Tensor | None  # the estimate's sample of the pool
    work: Path  # WORK/folds

    def file(self, unit: Unit) -> Path | None:
        """What a unit leaves for others (None: only its accuracy)."""
        folder = self.work / f"fold{unit.fold}"
        if unit.kind == CLASSIFIER:
            return folder / f"classical-{unit.policy}-seed{unit.repeat}.pt"
        if unit.kind == FIXMATCH:
            return folder / f"fixmatch-seed{unit.repeat}.pt"
        if unit.kind == GENERATOR:
            return folder / "generator.onnx"  # where synthetic.train_generator exports it
        return None

    def inputs(self, unit: Unit) -> list[Unit]:
        if unit.kind != STUDENT:
            return []
        needs = [unit.teacher]
        if unit.arm in (SYNTHETIC, BOTH) and self.recipes.model is None:
            needs.append(Unit(GENERATOR, unit.fold))
        return needs

    def seed(self, unit: Unit) -> int:
        return self.recipes.settings.seed * 10_007 + unit.fold * 101 + unit.repeat

    def _classifier(self, unit: Unit) -> SmallCNN:
        return self.recipes.load(self.file(unit), "delete it and rerun: augment trains it again")

    def perform(self, unit: Unit) -> float | None:
        """Make one unit here and now; its held-out accuracy, where it has one."""
        recipes = self.recipes
        train_index, held = self.folds[unit.fold]
        images, labels = self.images[train_index], self.labels[train_index]
        n_labelled, seed = len(labels), self.seed(unit)
        if unit.kind == GENERATOR:
            from ganaug.train import with_overrides

            recipes.generator(images, labels, self.file(unit).parent,
                              gan=with_overrides(recipes.gan, train={"threads": 1}, data={"num_workers": 0}))
            return None
        if unit.kind == FIXMATCH:
            recipes.save(recipes.fixmatch(images, labels, self.unlabelled, seed), self.file(unit))
            return None
        synthetic = None
        if unit.kind == CLASSIFIER:
            model = recipes.train(images, labels, n_labelled, seed, unit.policy)
            recipes.save(model, self.file(unit))
        else:
            teacher = self._classifier(unit.teacher)
            if unit.arm != SYNTHETIC:
                extra, extra_labels = recipes.pseudo(teacher, self.unlabelled)
                images, labels = torch.cat([images, extra]), torch.cat([labels, extra_labels])
            if unit.arm != PSEUDO:
                generator = recipes.model or self.file(Unit(GENERATOR, unit.fold))
                synthetic = recipes.synthetic(generator, teacher)[1]
            model = recipes.train(images, labels, n_labelled, seed, unit.policy, synthetic)
        return accuracy(model, self.images[held], self.labels[held])


def best_policy(policies: tuple[str, ...], accuracies: dict[str, list[float]]) -> str:
    """The policy with the best mean held-out accuracy over every fold and seed (ties: the first listed)."""
    return max(policies, key=lambda policy: float(np.mean(accuracies[policy])))


def measure(data: FoldData, policies: tuple[str, ...], arms: tuple[str, ...], seeds: int, state, jobs: int,
            progress: bool) -> None:
    """Make every unit that `state` (get/record) and the work directory do not hold yet, `jobs` at a
    time, recording each accuracy as it comes."""
    from tqdm import tqdm

    folds, repeats = range(len(data.folds)), range(seeds)
    classifiers = [Unit(CLASSIFIER, f, r, p) for p in policies for f in folds for r in repeats]
    students = [Unit(STUDENT, f, r, arm=arm) for arm in arms if arm != CLASSICAL for f in folds for r in repeats]

    def finished(unit: Unit) -> bool:
        file = data.file(unit)
        return (unit.key is None or state.get(unit.key) is not None) and (file is None or file.is_file())

    def chosen_policy() -> str | None:
        if not all(finished(unit) for unit in classifiers):
            return None
        return best_policy(policies, {p: [state.get(policy_key(p, f, r)) for f in folds for r in repeats]
                                      for p in policies})

    plan = classifiers + students
    for student in students:  # the teachers and generators they need
        plan += [need for need in data.inputs(student) if need.kind != CLASSIFIER and need not in plan]
    # A teacher or generator is made only for a student still to be measured.
    needed = {need for student in students if not finished(student) for need in data.inputs(student)}
    todo = [unit for unit in plan if not finished(unit) and (unit.key is not None or unit in needed)]
    todo.sort(key=lambda unit: LONGEST_FIRST.index(unit.kind))
    jobs = max(1, min(jobs, len(todo)))
    bar = tqdm(total=len(plan), initial=len(plan) - len(todo), unit="unit", desc="estimate", disable=not progress)
    with bar, _workers(data, jobs) as start:
        running: dict[Future, Unit] = {}
        failure: BaseException | None = None
        while todo or running:
            policy = chosen_policy()
            for unit in list(todo):
                if failure is not None or len(running) >= jobs:
                    break
                ready = replace(unit, policy=policy) if unit.kind == STUDENT and policy else unit
                if ready.kind == STUDENT and not (ready.policy and all(map(finished, data.inputs(ready)))):
                    continue
                todo.remove(unit)
                running[start(ready)] = ready
            if not running:
                if failure is None and todo:
                    raise RuntimeError(f"the estimate cannot start {todo[0]}: its inputs are missing")
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                unit = running.pop(future)
                try:
                    value = future.result()
                except BrokenProcessPool:
                    raise UserError("a worker process of augment's estimate died (most often out of memory); "
                                    "rerun to resume, with fewer --jobs") from None
                except Exception as exc:  # let the other running units finish and be recorded first
                    failure = failure or exc
                    continue
                if unit.key is not None:
                    state.record(unit.key, value)
                bar.update(1)
        if failure is not None:
            raise failure


# -- where units run --------------------------------------------------------------------------


@contextlib.contextmanager
def _workers(data: FoldData, jobs: int) -> Iterator[Callable[[Unit], Future]]:
    """start(unit) -> a Future of its accuracy: run here (jobs <= 1) or in `jobs` spawned processes,
    one thread each either way. Interrupted (Ctrl-C, SIGTERM, an error in this process), the workers
    are stopped: a GAN saves its checkpoint, and finished units are already in the state."""
    if jobs <= 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)

        def here(unit: Unit) -> Future:
            future: Future = Future()
            future.set_result(data.perform(unit))  # an exception goes straight up, as without a pool
            return future

        try:
            with sigterm_stops():
                yield here
        finally:
            torch.set_num_threads(threads)
        return
    # spawn, not fork: a forked child of a process whose OpenMP threads ran can hang in them
    context = multiprocessing.get_context("spawn")
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker, initargs=(data,))
    try:
        with sigterm_stops():
            yield lambda unit: pool.submit(_perform, unit)
    except BaseException:
        for process in set(multiprocessing.active_children()) - before:
            process.terminate()  # SIGTERM: a GAN saves its checkpoint and stops, a classifier stops
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_DATA: FoldData | None = None  # a worker's FoldData, set once when it starts


def _start_worker(data: FoldData) -> None:
    global _DATA
    _DATA = data
    torch.set_num_threads(1)
    die_with_parent()  # augment SIGKILLed: its workers do not train on for nobody


def _perform(unit: Unit) -> float | None:
    return _DATA.perform(unit)
