"""Classification metrics (scikit-learn underneath), one dict per set of predictions.

Binary: F1 at a threshold, PR-AUC (= average precision), ROC-AUC, accuracy.
Multiclass: macro F1, macro one-vs-rest PR-AUC and ROC-AUC, accuracy. One rule for every macro
average: a class absent from the true labels is left out of it (a fold or resample without a rare
subtype scores the classes it has). A metric that is undefined on the data is NaN: AUC, F1 and
MCC with one class present (sklearn's zero_division / 0 would read as a real, terrible score and
pull fold means and paired differences down).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

METRIC_NAMES = ("f1", "pr_auc", "roc_auc", "accuracy")


def _safe(fn: Callable[[], float]) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = float(fn())
        except ValueError:
            return math.nan
    return value


def binary_metrics(y: Sequence[int] | np.ndarray, prob: Sequence[float] | np.ndarray,
                   threshold: float = 0.5, *, pred: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of positive-class probabilities ``prob`` against 0/1 targets ``y``.

    ``pred`` overrides thresholding (pooled predictions made with per-fold thresholds).
    """
    from sklearn import metrics as skm

    y = np.asarray(y, dtype=np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    pred = (prob >= threshold).astype(np.int64) if pred is None else np.asarray(pred, dtype=np.int64)
    two = len(np.unique(y)) == 2
    return {
        "f1": _safe(lambda: skm.f1_score(y, pred, zero_division=0)) if two else math.nan,
        "pr_auc": _safe(lambda: skm.average_precision_score(y, prob)) if two else math.nan,
        "roc_auc": _safe(lambda: skm.roc_auc_score(y, prob)) if two else math.nan,
        "accuracy": _safe(lambda: skm.accuracy_score(y, pred)),
    }


def multiclass_metrics(y: Sequence[int] | np.ndarray, probs: np.ndarray,
                       n_classes: int | None = None) -> dict[str, float]:
    """Macro metrics of class probabilities ``probs`` (n, C); classes absent from ``y`` are skipped
    by every macro average (F1, PR-AUC, ROC-AUC, balanced accuracy alike)."""
    from sklearn import metrics as skm

    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = n_classes or probs.shape[1]
    pred = probs.argmax(axis=1)

    def ovr(score: Callable[..., float]) -> float:
        return _ovr(score, y, probs, n_classes)

    two = len(np.unique(y)) >= 2
    return {
        "f1": _safe(lambda: skm.f1_score(y, pred, average="macro", labels=sorted(set(y.tolist())),
                                         zero_division=0)) if two else math.nan,
        "pr_auc": _safe(lambda: ovr(skm.average_precision_score)),
        "roc_auc": _safe(lambda: ovr(skm.roc_auc_score)),
        "accuracy": _safe(lambda: skm.accuracy_score(y, pred)),
    }


def _ovr(score: Callable[..., float], y: np.ndarray, probs: np.ndarray, n_classes: int) -> float:
    """Macro one-vs-rest ``score`` over the classes both present and absent in ``y`` (NaN if < 2)."""
    present = [c for c in range(n_classes) if (y == c).any() and (y != c).any()]
    if len(present) < 2:
        return math.nan
    onehot = np.eye(n_classes, dtype=np.int64)[y]
    return float(np.mean([score(onehot[:, c], probs[:, c]) for c in present]))


def roc_auc(y: Sequence[int] | np.ndarray, probs: np.ndarray) -> float:
    """``compute(y, probs)["roc_auc"]`` without the other metrics (training's per-epoch metric)."""
    from sklearn import metrics as skm

    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1 or probs.shape[1] <= 2:
        prob = probs.reshape(len(probs), -1)[:, -1]
        return _safe(lambda: skm.roc_auc_score(y, prob)) if len(np.unique(y)) == 2 else math.nan
    return _safe(lambda: _ovr(skm.roc_auc_score, y, probs, probs.shape[1]))


def compute(y: np.ndarray, probs: np.ndarray, *, threshold: float = 0.5,
            pred: np.ndarray | None = None) -> dict[str, float]:
    """Binary when ``probs`` is 1-d or has <= 2 columns (the last is the positive class), else multiclass."""
    probs = np.asarray(probs)
    if probs.ndim == 1 or probs.shape[1] <= 2:
        return binary_metrics(y, probs.reshape(len(probs), -1)[:, -1], threshold, pred=pred)
    return multiclass_metrics(y, probs)


def best_f1_threshold(y: np.ndarray, prob: np.ndarray) -> float:
    """Threshold maximising F1 on (validation) predictions; 0.5 when F1 is undefined there."""
    from sklearn.metrics import precision_recall_curve

    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y, prob)
    f1 = 2 * precision[:-1] * recall[:-1] / np.clip(precision[:-1] + recall[:-1], 1e-12, None)
    return float(thresholds[int(np.argmax(f1))])


def json_safe(d: Any) -> Any:
    """NaN -> None recursively, so metrics.json is valid JSON."""
    if isinstance(d, dict):
        return {k: json_safe(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [json_safe(v) for v in d]
    if isinstance(d, float) and math.isnan(d):
        return None
    return d


def from_json_safe(d: Any) -> Any:
    """The inverse of :func:`json_safe` for metric dicts read back: None -> NaN recursively."""
    if isinstance(d, dict):
        return {k: from_json_safe(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [from_json_safe(v) for v in d]
    return math.nan if d is None else d


# --------------------------------------------------------------------------- evaluate: more metrics, CIs
EVAL_METRIC_NAMES = (*METRIC_NAMES, "mcc", "balanced_accuracy", "brier")


def eval_metrics(y: np.ndarray, probs: np.ndarray, *, threshold: float = 0.5,
                 pred: np.ndarray | None = None, calibrated: np.ndarray | None = None) -> dict[str, float]:
    """``compute`` plus MCC, balanced accuracy and the Brier score (multiclass: sklearn's 0..2 sum).

    ``probs`` is (n, C) (binary: (n, 2) or the positive column alone). ``calibrated`` (same shape):
    the probabilities the Brier score describes (e.g. with a class-weighted loss undone); default
    ``probs``.
    """
    from sklearn import metrics as skm

    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    out = compute(y, probs, threshold=threshold, pred=pred)
    binary = probs.ndim == 1 or probs.shape[1] <= 2
    pos = probs.reshape(len(probs), -1)[:, -1]
    if pred is None:
        pred = (pos >= threshold).astype(np.int64) if binary else probs.argmax(axis=1)
    out["mcc"] = _safe(lambda: skm.matthews_corrcoef(y, pred)) if len(np.unique(y)) >= 2 else math.nan
    out["balanced_accuracy"] = _safe(lambda: skm.balanced_accuracy_score(y, pred))
    if calibrated is not None:
        probs = np.asarray(calibrated, dtype=np.float64)
        pos = probs.reshape(len(probs), -1)[:, -1]
    if binary:
        out["brier"] = _safe(lambda: skm.brier_score_loss(y, pos, pos_label=1))
    else:
        out["brier"] = _safe(lambda: skm.brier_score_loss(y, probs, labels=list(range(probs.shape[1]))))
    return out


def bootstrap_ci(y: np.ndarray, probs: np.ndarray, *, pred: np.ndarray | None = None,
                 groups: Sequence[Any] | np.ndarray | None = None, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05, threshold: float = 0.5,
                 calibrated: np.ndarray | None = None) -> dict[str, tuple[float, float]]:
    """Percentile ``1 - alpha`` CI of every ``eval_metrics`` value, resampling patients.

    ``groups`` (e.g. patient ids) keeps a patient's rows together (several repeats or slides);
    default: one row per patient. A resample = integer weights per patient (how often it was
    drawn), scored by ``weighted_metrics`` for all resamples at once (sklearn per resample costs
    ~0.1 s). Resamples where a metric is undefined are left out of its CI. Rows of several repeats:
    ``resampled_pooled`` (this stacks them into one metric).
    """
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        probs = np.stack([1 - probs, probs], axis=1)
    if pred is None:
        pred = (probs[:, 1] >= threshold).astype(np.int64) if probs.shape[1] == 2 else probs.argmax(1)
    if len(y) == 0 or n_boot < 1:
        return {k: (math.nan, math.nan) for k in EVAL_METRIC_NAMES}
    _, inverse = np.unique(np.asarray(groups if groups is not None else np.arange(len(y))),
                           return_inverse=True)
    return resampled_pooled([(1.0, [(inverse, y, probs, pred, calibrated)])], int(inverse.max()) + 1,
                            n_boot=n_boot, seed=seed, alpha=alpha)


def resampled_pooled(sides: Sequence[tuple[float, Sequence[tuple[np.ndarray, ...]]]], n: int, *,
                     n_boot: int, seed: int, alpha: float = 0.05) -> dict[str, tuple[float, float]]:
    """Percentile CI of ``sum(sign * pooled(side))`` under patient resamples, the estimator of the
    pooled value itself: a pooled metric is the mean over repeats of the metric of each repeat's rows.

    ``sides``: (sign, parts), parts = per repeat (patient positions in 0..n-1, y, probs, pred,
    calibrated). One set of patient weights per resample is applied to every repeat (and every side:
    a paired difference), then each side's metrics are averaged over repeats (NaN repeats skipped).
    """
    if n == 0 or n_boot < 1:
        return {k: (math.nan, math.nan) for k in EVAL_METRIC_NAMES}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {k: [] for k in EVAL_METRIC_NAMES}
    for start in range(0, int(n_boot), 256):  # chunks bound the (B, n) weight matrix
        size = min(256, int(n_boot) - start)
        w = np.stack([np.bincount(p, minlength=n) for p in rng.integers(n, size=(size, n))]).astype(float)
        total = {k: np.zeros(size) for k in EVAL_METRIC_NAMES}
        for sign, parts in sides:
            got = [weighted_metrics(y, probs, pred, w[:, idx], calibrated=cal)
                   for idx, y, probs, pred, cal in parts]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a resample where every repeat is undefined stays NaN
                for k in total:
                    total[k] = total[k] + sign * np.nanmean(np.stack([g[k] for g in got]), axis=0)
        for k, v in total.items():
            draws[k].append(v)
    out: dict[str, tuple[float, float]] = {}
    for k, parts_k in draws.items():
        v = np.concatenate(parts_k)
        v = v[np.isfinite(v)]
        out[k] = ((float(np.quantile(v, alpha / 2)), float(np.quantile(v, 1 - alpha / 2))) if v.size
                  else (math.nan, math.nan))
    return out


def _ranking(score: np.ndarray, pos: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted ROC-AUC and average precision (sklearn's step definitions, ties as one threshold)
    of ``score`` for 0/1 ``pos``; ``w`` (B, n) weights; NaN where a class has no weight."""
    order = np.argsort(-score, kind="mergesort")
    s = score[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # one level per distinct score, descending
    wp = np.add.reduceat(w[:, order] * pos[order], starts, axis=1)
    wn = np.add.reduceat(w[:, order] * (1 - pos[order]), starts, axis=1)
    P, N = wp.sum(1), wn.sum(1)
    tp, fp = np.cumsum(wp, 1), np.cumsum(wn, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (wp * (N[:, None] - fp + 0.5 * wn)).sum(1) / (P * N)  # pos beats lower negs, ties half
        precision = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1), 0.0)
        ap = (wp * precision).sum(1) / P
    bad = (P == 0) | (N == 0)
    return np.where(bad, np.nan, auc), np.where(bad, np.nan, ap)


def weighted_metrics(y: np.ndarray, probs: np.ndarray, pred: np.ndarray,
                     w: np.ndarray, *, calibrated: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``eval_metrics`` under B sets of integer row weights ``w`` (B, n) at once: row i counted
    ``w[b, i]`` times. Agrees with scikit-learn on the repeated rows (tested)."""
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    w = np.atleast_2d(np.asarray(w, dtype=np.float64))
    C = probs.shape[1]
    Y, Pr = np.eye(C)[y], np.eye(C)[np.asarray(pred, dtype=np.int64)]
    cm = np.einsum("bn,nc,nd->bcd", w, Y, Pr)  # (B, true, pred)
    total = w.sum(1)
    t, p, tp = cm.sum(2), cm.sum(1), np.diagonal(cm, axis1=1, axis2=2)
    one_class = (t > 0).sum(1) < 2  # F1 and MCC undefined there (NaN, as in eval_metrics)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-NaN rows (a resample with one class) stay NaN
        f1_c = np.where(t + p > 0, 2 * tp / np.where(t + p > 0, t + p, 1), 0.0)
        recall = np.where(t > 0, tp / np.where(t > 0, t, 1), np.nan)
        cov = tp.sum(1) * total - (t * p).sum(1)
        den = np.sqrt((total**2 - (p * p).sum(1)) * (total**2 - (t * t).sum(1)))
        mcc = np.where(den > 0, cov / np.where(den > 0, den, 1), 0.0)
        out = {"accuracy": tp.sum(1) / total, "mcc": np.where(one_class, np.nan, mcc),
               "balanced_accuracy": np.nanmean(np.where(t > 0, recall, np.nan), axis=1)}
        cal = probs if calibrated is None else np.asarray(calibrated, dtype=np.float64).reshape(probs.shape)
        sq = ((Y - cal) ** 2).sum(1) * (0.5 if C == 2 else 1.0)
        out["brier"] = w @ sq / total
    if C == 2:
        out["f1"] = f1_c[:, 1]
        out["roc_auc"], out["pr_auc"] = _ranking(probs[:, 1], Y[:, 1], w)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["f1"] = np.nanmean(np.where(t > 0, f1_c, np.nan), axis=1)  # absent classes skipped
        rocs, aps = zip(*(_ranking(probs[:, c], Y[:, c], w) for c in range(C)), strict=True)
        roc, ap = np.stack(rocs, 1), np.stack(aps, 1)  # NaN where a class is absent or alone
        ok = np.isfinite(roc).sum(1) >= 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["roc_auc"] = np.where(ok, np.nanmean(roc, 1), np.nan)
            out["pr_auc"] = np.where(ok, np.nanmean(ap, 1), np.nan)
    out["f1"] = np.where(one_class, np.nan, out["f1"])
    return {k: out[k] for k in EVAL_METRIC_NAMES}
