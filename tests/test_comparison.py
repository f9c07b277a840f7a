"""Comparing models on the same patients: pooled values inside their own CIs with repeats, the
corrected t-test's degenerate cases."""

from __future__ import annotations

import numpy as np
import polars as pl

from brcatool import comparison as C
from brcatool import metrics as M
from brcatool.evaluation import oof_ci, pooled_metrics

CLASSES = ["LumA", "Basal"]


def _oof_two_repeats(n: int = 60, seed: int = 0) -> pl.DataFrame:
    """Two repeats of one cohort, the second model squashed into [0.55, 0.75] (another calibration):
    each repeat ranks well; stacked, the repeats' scores interleave."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n // 2, int), np.ones(n - n // 2, int)]
    p0 = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, n), 0.01, 0.99)
    p1 = 0.55 + 0.2 * p0
    rows = []
    for r, p in enumerate((p0, p1)):
        rows.append(pl.DataFrame({"patient_id": [f"P{i:03d}" for i in range(n)], "repeat": r,
                                  "fold": np.arange(n) % 3, "target": y, "prob": p,
                                  "pred": (p >= (0.5 if r == 0 else 0.65)).astype(int)}))
    return pl.concat(rows)


def test_pooled_value_sits_inside_its_ci_with_repeats() -> None:
    oof = _oof_two_repeats()
    pooled, ci = pooled_metrics(oof, CLASSES), oof_ci(oof, CLASSES, 300, 0)
    for m in M.EVAL_METRIC_NAMES:
        assert ci[m][0] <= pooled[m] <= ci[m][1], (m, pooled[m], ci[m])
    s = C.scores(oof, CLASSES, n_boot=300, seed=0)
    assert all(s.ci[m][0] <= s.pooled[m] <= s.ci[m][1] for m in M.EVAL_METRIC_NAMES)


def test_one_repeat_ci_equals_the_plain_patient_bootstrap() -> None:
    oof = _oof_two_repeats().filter(pl.col("repeat") == 0)
    got = oof_ci(oof, CLASSES, 200, 3)
    p = oof["prob"].to_numpy()
    ref = M.bootstrap_ci(oof["target"].to_numpy(), np.stack([1 - p, p], 1), pred=oof["pred"].to_numpy(),
                         n_boot=200, seed=3)
    assert got == ref


def test_zero_variance_differences_give_no_p() -> None:
    """Every fold better by exactly 0.1: the t statistic is undefined, not infinitely significant."""
    t, p = C.nadeau_bengio(np.full(5, 0.1), 0.25)
    assert np.isnan(t) and np.isnan(p)
    t, p = C.nadeau_bengio(np.array([0.1, 0.2, 0.15, 0.12, 0.18]), 0.25)
    assert t > 0 and 0 < p < 1
