"""Comparing models on the same patients: scores, paired differences and their significance.

Pure functions over out-of-fold tables (``oof.parquet`` of runs made on one saved split), used by
``ablate``:

- ``common_patients``: the patients every compared model scored (each model drops those lacking
  its modalities, so without this gene and xattn would be scored on different patients);
- ``scores``: pooled out-of-fold metrics (mean over repeats) with a patient bootstrap CI, and the
  per-fold mean ± sd as a separate figure;
- ``paired``: model - reference on those patients: per (repeat, fold) differences, the
  Nadeau-Bengio corrected resampled t-test over them, and a paired patient bootstrap of the pooled
  difference (the same resampled patients for both models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from brcatool import metrics as M


@dataclass
class Scores:
    n_patients: int
    pooled: dict[str, float]
    ci: dict[str, tuple[float, float]]
    fold_mean: dict[str, float]
    fold_sd: dict[str, float]
    per_fold: list[dict[str, Any]] = field(default_factory=list)


def common_patients(oofs: dict[str, Any]) -> list[str]:
    """Patients present in every table (sorted)."""
    sets = [set(t["patient_id"].cast(str).to_list()) for t in oofs.values()]
    return sorted(set.intersection(*sets)) if sets else []


def restrict(oof: Any, patients: list[str]) -> Any:
    import polars as pl

    return oof.filter(pl.col("patient_id").cast(pl.String).is_in(patients))


def scores(oof: Any, classes: list[str], *, n_boot: int, seed: int) -> Scores:
    """Pooled metrics with their bootstrap CI, and fold mean ± sd, of one oof table."""
    from brcatool.evaluation import fold_metrics, oof_ci, pooled_metrics, summarise

    per_fold = fold_metrics(oof, classes)
    mean, sd = summarise(per_fold)
    return Scores(n_patients=int(oof["patient_id"].n_unique()), pooled=pooled_metrics(oof, classes),
                  ci=oof_ci(oof, classes, n_boot, seed), fold_mean=mean, fold_sd=sd, per_fold=per_fold)


def nadeau_bengio(diffs: np.ndarray, test_over_train: float) -> tuple[float, float]:
    """Corrected resampled t-test (Nadeau & Bengio 2003) of per-fold differences: t =
    mean / sqrt((1/J + n_test/n_train) var), J - 1 degrees of freedom; (t, two-sided p)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size < 2:
        return math.nan, math.nan
    var = d.var(ddof=1)
    if var == 0:  # every fold differs by the same amount: the test is undefined (not p = 0)
        return math.nan, math.nan
    t = d.mean() / math.sqrt((1 / d.size + test_over_train) * var)
    return float(t), float(2 * stats.t.sf(abs(t), df=d.size - 1))


def per_fold_diffs(mine: list[dict[str, Any]], ref: list[dict[str, Any]], metric: str) -> np.ndarray:
    """model - reference per (repeat, fold) present in both."""
    theirs = {(f["repeat"], f["fold"]): f[metric] for f in ref}
    return np.array([f[metric] - theirs[(f["repeat"], f["fold"])] for f in mine
                     if (f["repeat"], f["fold"]) in theirs], dtype=np.float64)


def paired_bootstrap(model_oof: Any, ref_oof: Any, patients: list[str], classes: list[str], *,
                     n_boot: int, seed: int, alpha: float = 0.05) -> dict[str, tuple[float, float]]:
    """Percentile CI of pooled(model) - pooled(reference) under the same patient resamples."""
    from brcatool.evaluation import repeat_parts

    sides = [(1.0, repeat_parts(model_oof, patients, classes)),
             (-1.0, repeat_parts(ref_oof, patients, classes))]
    return M.resampled_pooled(sides, len(patients), n_boot=n_boot, seed=seed, alpha=alpha)


def paired(mine: Scores, ref: Scores, model_oof: Any, ref_oof: Any, patients: list[str],
           classes: list[str], *, folds: int, n_boot: int, seed: int) -> dict[str, dict[str, float]]:
    """Per metric: diff_mean/diff_sd/diff_wins (per fold), diff_pooled with its paired bootstrap CI,
    and the corrected resampled t-test (t, p) over the per-fold differences."""
    boot = paired_bootstrap(model_oof, ref_oof, patients, classes, n_boot=n_boot, seed=seed)
    out = {}
    for m in M.EVAL_METRIC_NAMES:
        d = per_fold_diffs(mine.per_fold, ref.per_fold, m)
        d = d[np.isfinite(d)]
        t, p = nadeau_bengio(d, 1.0 / (folds - 1))
        out[m] = {"diff_mean": float(d.mean()) if d.size else math.nan,
                  "diff_sd": float(d.std(ddof=1)) if d.size > 1 else math.nan,
                  "diff_wins": int((d > 0).sum()), "diff_pooled": mine.pooled[m] - ref.pooled[m],
                  "diff_ci_low": boot[m][0], "diff_ci_high": boot[m][1], "diff_t": t, "diff_p": p}
    return out


def empirical_p(real: float, null: np.ndarray) -> float:
    """(1 + #null >= real) / (N + 1): the permutation p-value (never 0)."""
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if not np.isfinite(real) or null.size == 0:
        return math.nan
    return float((1 + (null >= real).sum()) / (null.size + 1))
