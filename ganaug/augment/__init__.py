"""`ganaug augment`: the training set that measurably makes a classifier best, from a user's labelled
images (and any unlabelled ones), with an estimate on their own labels of what each ingredient is worth.

    from ganaug.augment import AugmentSettings, run
    result = run(AugmentSettings(labelled="my_labelled/", unlabelled="my_pool/", out="train_set"))
    result.report["sentences"]

api.py runs it (estimate, decision, output); estimate.py owns the folds and the interval; pool.py the
unlabelled images; synthetic.py the generator and the filter; output.py the directory it writes;
report.py the report. docs/augment.md says what it measures and how to read it.
"""

from ganaug.augment.api import AugmentResult, run
from ganaug.augment.settings import AugmentSettings

__all__ = ["AugmentResult", "AugmentSettings", "run"]
