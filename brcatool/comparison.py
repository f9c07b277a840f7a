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
    if var == 0:
        return (math.nan, math.nan) if d.mean() == 0 else (math.copysign(math.inf, d.mean()), 0.0)
    t = d.mean() / math.sqrt((1 / d.size + test_over_train) * var)
    return float(t), float(2 * stats.t.sf(abs(t), df=d.size - 1))


def per_fold_diffs(mine: list[dict[str, Any]], ref: list[dict[str, Any]], metric: str) -> np.ndarray:
    """model - reference per (repeat, fold) present in both."""
    theirs = {(f["repeat"], f["fold"]): f[metric] for f in ref}
    return np.array([f[metric] - theirs[(f["repeat"], f["fold"])] for f in mine
                     if (f["repeat"], f["fold"]) in theirs], dtype=np.float64)


def _aligned(oof: Any, patients: list[str], classes: list[str]) -> list[tuple[np.ndarray, ...]]:
    """Per repeat: (patient positions, y, probs, pred, calibrated) in ``patients`` order."""
    import polars as pl

    from brcatool.training import calibration_probs, oof_probs

    pos = {p: i for i, p in enumerate(patients)}
    out = []
    for _, part in sorted(oof.group_by("repeat"), key=lambda g: g[0]):
        part = part.with_columns(pl.col("patient_id").cast(pl.String))
        idx = np.array([pos[p] for p in part["patient_id"].to_list()], dtype=np.int64)
        out.append((idx, part["target"].to_numpy(), oof_probs(part, classes), part["pred"].to_numpy(),
                    calibration_probs(part, classes)))
    return out


def paired_bootstrap(model_oof: Any, ref_oof: Any, patients: list[str], classes: list[str], *,
                     n_boot: int, seed: int, alpha: float = 0.05) -> dict[str, tuple[float, float]]:
    """Percentile CI of pooled(model) - pooled(reference) under the same patient resamples."""
    n = len(patients)
    if n == 0 or n_boot < 1:
        return {k: (math.nan, math.nan) for k in M.EVAL_METRIC_NAMES}
    a, b = _aligned(model_oof, patients, classes), _aligned(ref_oof, patients, classes)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {k: [] for k in M.EVAL_METRIC_NAMES}
    for start in range(0, int(n_boot), 256):
        size = min(256, int(n_boot) - start)
        w = np.stack([np.bincount(p, minlength=n) for p in rng.integers(n, size=(size, n))]).astype(float)
        diff = {k: np.zeros(size) for k in M.EVAL_METRIC_NAMES}
        for side, sign in ((a, 1.0), (b, -1.0)):
            for idx, y, probs, pred, cal in side:  # mean over repeats, as the pooled value
                got = M.weighted_metrics(y, probs, pred, w[:, idx], calibrated=cal)
                for k in diff:
                    diff[k] += sign * got[k] / len(side)
        for k, v in diff.items():
            draws[k].append(v)
    out = {}
    for k, parts in draws.items():
        v = np.concatenate(parts)
        v = v[np.isfinite(v)]
        out[k] = ((float(np.quantile(v, alpha / 2)), float(np.quantile(v, 1 - alpha / 2))) if v.size
                  else (math.nan, math.nan))
    return out


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
