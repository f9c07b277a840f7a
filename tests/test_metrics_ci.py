"""Evaluate-stage metrics (MCC, balanced accuracy, Brier) and the patient-level bootstrap CI."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from brcatool import metrics as M

# tiny exact predictions (ties included)
Y_BIN = np.array([0, 0, 0, 1, 1, 1, 0, 1, 0, 1])
P_BIN = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.4, 0.6, 0.9, 0.2, 0.3])
Y_MC = np.array([0, 1, 2, 2, 1, 0, 2, 1, 0, 1, 2, 0])
P_MC = np.array([[.7, .2, .1], [.2, .5, .3], [.1, .3, .6], [.3, .3, .4], [.4, .4, .2], [.5, .3, .2],
                 [.2, .2, .6], [.1, .8, .1], [.3, .4, .3], [.2, .6, .2], [.5, .1, .4], [.6, .2, .2]])


def test_eval_metrics_match_sklearn_binary() -> None:
    m = M.eval_metrics(Y_BIN, P_BIN)
    pred = (P_BIN >= 0.5).astype(int)
    assert m["f1"] == pytest.approx(skm.f1_score(Y_BIN, pred))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(Y_BIN, P_BIN))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(Y_BIN, P_BIN))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(Y_BIN, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(Y_BIN, pred))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(Y_BIN, P_BIN))
    # an explicit pred (per-fold thresholds) overrides the threshold
    other = np.ones_like(Y_BIN)
    m_other = M.eval_metrics(Y_BIN, P_BIN, pred=other)
    assert m_other["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(Y_BIN, other))


def test_eval_metrics_match_sklearn_multiclass() -> None:
    m = M.eval_metrics(Y_MC, P_MC)
    pred = P_MC.argmax(1)
    onehot = np.eye(3)[Y_MC]
    assert m["f1"] == pytest.approx(skm.f1_score(Y_MC, pred, average="macro"))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(onehot, P_MC, average="macro"))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(Y_MC, P_MC, multi_class="ovr", average="macro"))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(Y_MC, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(Y_MC, pred))
    assert m["brier"] == pytest.approx(np.mean(((onehot - P_MC) ** 2).sum(1)))


@pytest.mark.parametrize("multiclass", [False, True])
def test_weighted_metrics_equal_sklearn_on_repeated_rows(multiclass: bool) -> None:
    """The vectorised bootstrap scorer = scikit-learn on the resampled rows."""
    rng = np.random.default_rng(3)
    y, probs = (Y_MC, P_MC) if multiclass else (Y_BIN, np.stack([1 - P_BIN, P_BIN], 1))
    pred = probs.argmax(1) if multiclass else (probs[:, 1] >= 0.5).astype(int)
    w = rng.integers(0, 4, size=(6, len(y)))
    w[0] = 1
    got = M.weighted_metrics(y, probs, pred, w)
    for b in range(len(w)):
        idx = np.repeat(np.arange(len(y)), w[b])
        ref = M.eval_metrics(y[idx], probs[idx], pred=pred[idx])
        for k in M.EVAL_METRIC_NAMES:
            assert got[k][b] == pytest.approx(ref[k], nan_ok=True), (k, b)


def _predictions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = 1 / (1 + np.exp(-(1.5 * (2 * y - 1) + rng.standard_normal(n))))
    return y, score


def test_ci_contains_point_estimate_and_narrows_with_more_patients() -> None:
    widths = {}
    for n in (40, 640):
        y, p = _predictions(n, seed=n)
        point = M.eval_metrics(y, p)
        ci = M.bootstrap_ci(y, p, n_boot=400, seed=0)
        for k in M.EVAL_METRIC_NAMES:
            lo, hi = ci[k]
            assert lo <= point[k] <= hi, (n, k, lo, point[k], hi)
        widths[n] = {k: ci[k][1] - ci[k][0] for k in M.EVAL_METRIC_NAMES}
    for k in M.EVAL_METRIC_NAMES:
        assert widths[640][k] < 0.6 * widths[40][k], k  # ~ 1/sqrt(n): 4x narrower expected


def test_bootstrap_is_seeded_and_resamples_patients_not_rows() -> None:
    y, p = _predictions(60, seed=1)
    a = M.bootstrap_ci(y, p, n_boot=200, seed=5)
    assert a == M.bootstrap_ci(y, p, n_boot=200, seed=5)
    assert a != M.bootstrap_ci(y, p, n_boot=200, seed=6)
    # every patient twice (e.g. two repeats): resampling by patient keeps both rows together,
    # so each resample is the single-row resample with doubled weights -> identical CIs
    ids = np.arange(60)
    doubled = M.bootstrap_ci(np.r_[y, y], np.r_[p, p], groups=np.r_[ids, ids], n_boot=200, seed=5)
    for k in M.EVAL_METRIC_NAMES:
        assert doubled[k] == pytest.approx(a[k]), k


def test_bootstrap_undefined_metrics_are_nan() -> None:
    ci = M.bootstrap_ci(np.zeros(8, dtype=int), np.linspace(0, 1, 8), n_boot=20)
    assert np.isnan(ci["roc_auc"][0]) and np.isnan(ci["pr_auc"][1])
    lo, hi = ci["accuracy"]  # defined without both classes; brackets the point estimate 0.5
    assert 0 <= lo < 0.5 < hi <= 1
    assert all(np.isnan(v).all() for v in M.bootstrap_ci(Y_BIN, P_BIN, n_boot=0).values())


def test_f1_and_mcc_of_one_class_are_nan_not_zero() -> None:
    """sklearn's zero_division gives 0 for a fold without positives; an undefined score must not
    read as the worst one (it would pull fold means and paired differences down)."""
    y1, p1 = np.zeros(6, dtype=int), np.linspace(0.1, 0.9, 6)
    m = M.eval_metrics(y1, p1)
    assert np.isnan(m["f1"]) and np.isnan(m["mcc"]) and np.isnan(m["roc_auc"])
    assert m["accuracy"] == pytest.approx(0.5)  # still defined
    multi = M.eval_metrics(np.full(5, 2), np.tile([0.2, 0.3, 0.5], (5, 1)))
    assert np.isnan(multi["f1"]) and np.isnan(multi["mcc"]) and multi["accuracy"] == 1.0
    w = np.array([[1.0] * 5 + [0.0] * 5, [1.0] * 10])  # resample 0 holds only the class-0 rows
    y = np.r_[np.zeros(5, int), np.ones(5, int)]
    got = M.weighted_metrics(y, np.stack([1 - P_BIN, P_BIN], 1), (P_BIN >= 0.5).astype(int), w)
    assert np.isnan(got["f1"][0]) and np.isnan(got["mcc"][0]) and np.isfinite(got["accuracy"][0])
    assert np.isfinite(got["f1"][1]) and np.isfinite(got["mcc"][1])
