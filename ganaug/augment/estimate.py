"""What an ingredient is worth on the user's own labels: stratified folds, paired differences, and
an interval that does not pretend the folds are independent.

The folds share most of their training images, so their accuracies are correlated and a plain
t-interval over them is too narrow. The corrected resampled t-test of Nadeau and Bengio (2003,
"Inference for the generalization error") widens the variance by the share held out:
var * (1/J + n_held_out / n_train) for J folds. An ingredient is kept only where the lower end of
that interval is above zero.

Two rules decide with that interval, one per kind of ingredient:
- MEASURABLY_BETTER (the synthetic images): kept only where the whole interval is above zero. Their
  gain has been small or negative wherever ganaug measured it (docs/evaluation.md), so the burden
  of proof is on them.
- NOT_WORSE_ON_AVERAGE (pseudo-labels): kept where the mean difference is not negative, the usual
  choice on validation data. Self-training gained 0.7 to 2.7 points at 5 to 20 labels per class on
  the digits, and a 3-fold estimate on 50 images cannot show a gain of that size: the first rule
  would throw it away. (Left out only where the whole interval was below zero, it was kept on
  MNIST-5k where all three folds put it 6 to 18 points below classical augmentation.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ganaug.errors import UserError

CONFIDENCE = 0.95
MEASURABLY_BETTER, NOT_WORSE_ON_AVERAGE = "measurably better", "not worse on average"


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train indices, held-out indices) per fold: every class split across the folds, seeded."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels)
    fewest = int(counts.min())
    if fewest < folds:
        raise UserError(f"class {int(counts.argmin())} has {fewest} labelled image{'s' * (fewest != 1)}; "
                        f"--folds {folds} holds one out per fold and needs at least {folds} of every class "
                        f"(use --folds {max(2, fewest)} or label more)" if fewest >= 2 else
                        f"class {int(counts.argmin())} has {fewest} labelled image; the estimate holds images "
                        "of every class out and needs at least 2 of each")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(np.sort(train), np.sort(held)) for train, held in splitter.split(np.zeros(len(labels)), labels)]


@dataclass(frozen=True)
class Difference:
    """An arm against another, in accuracy points over the held-out folds."""

    better: str  # the arm with the ingredient
    worse: str  # the arm without it
    mean: float
    low: float
    high: float
    folds: int

    @property
    def worth_it(self) -> bool:
        return self.low > 0

    @property
    def harmful(self) -> bool:
        return self.high < 0

    def keeps(self, rule: str) -> bool:
        """Whether `rule` keeps the ingredient (an interval of NaN, from one fold, shows nothing)."""
        return self.worth_it if rule == MEASURABLY_BETTER else self.mean >= 0

    def as_dict(self) -> dict:
        return asdict(self)

    def interval_text(self) -> str:
        if math.isnan(self.low):
            return f"{self.mean:+.1f} points"
        return f"{self.mean:+.1f} points [{self.low:+.1f}, {self.high:+.1f}]"


def corrected_difference(better: str, worse: str, with_ingredient: list[float], without: list[float],
                         held_out_share: float) -> Difference:
    """Paired per-fold accuracies (fractions) -> the mean difference in points and its corrected
    95% interval (NaN bounds below two folds)."""
    from scipy import stats

    differences = 100 * (np.asarray(with_ingredient, np.float64) - np.asarray(without, np.float64))
    folds = len(differences)
    mean = float(differences.mean())
    if folds < 2:
        return Difference(better, worse, mean, math.nan, math.nan, folds)
    variance = float(differences.var(ddof=1)) * (1 / folds + held_out_share / (1 - held_out_share))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, folds - 1)) * math.sqrt(variance)
    return Difference(better, worse, mean, mean - half, mean + half, folds)


def sentence(difference: Difference, ingredient: str, rule: str) -> str:
    """The plain sentence the report gives for one ingredient decided by `rule`."""
    text = f"{ingredient[0].upper()}{ingredient[1:]}: {difference.interval_text()}"
    if difference.worth_it:
        return f"{text}, measurably better; kept."
    if difference.harmful:
        return f"{text}, measurably worse; left out."
    if rule == MEASURABLY_BETTER:
        return f"{text}, not measurably better; left out."
    if difference.keeps(rule):
        return f"{text}, not worse on average; kept."
    return f"{text}, worse on average; left out."
