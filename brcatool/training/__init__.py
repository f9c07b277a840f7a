"""The train stage as a package, along its seams (no torch at import time).

- ``settings``: ``TrainSettings`` (shared with ``ablate``) and ``TrainConfig``
- ``batching``: a cohort's tensors, the forward pass, inference, eligibility, ``oof_probs``
- ``fold``: the inner split, the loss, ``train_fold`` (one fold)
- ``units``: one (model, repeat, fold) fit as a unit of work with its record (``--dask``)
- ``stage``: cross-validation, run outputs, ``run_train``/``is_finished``/``load_result``/``fold_jobs``
- ``prediction``: a finished run's fold models: ``load_fold_model``, ``predict``
"""

from brcatool.training.batching import Batcher, calibration_probs, correct_probs, eligible, infer, oof_probs
from brcatool.training.fold import BIG_WORK, FoldOutput, is_big, train_fold
from brcatool.training.prediction import FoldModel, Predictions, fold_model_paths, load_fold_model, predict
from brcatool.training.settings import MISSING_MODES, PAPER, TrainConfig, TrainSettings
from brcatool.training.stage import (
    TrainResult,
    fold_dirname,
    fold_jobs,
    is_finished,
    load_result,
    oof_only,
    run_fold_jobs,
    run_train,
)
from brcatool.training.units import CohortSource, FitJob, with_variant

__all__ = [
    "BIG_WORK", "Batcher", "CohortSource", "FitJob", "FoldModel", "FoldOutput", "MISSING_MODES", "PAPER",
    "Predictions", "TrainConfig", "TrainResult", "TrainSettings", "calibration_probs", "correct_probs",
    "eligible",
    "fold_dirname", "fold_jobs", "fold_model_paths", "infer", "is_big", "is_finished", "load_fold_model",
    "load_result", "oof_only", "oof_probs", "predict", "run_fold_jobs", "run_train", "train_fold",
    "with_variant"
]
