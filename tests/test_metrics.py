"""Metrics on tiny exact examples (values worked out by hand)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from brcatool import metrics as M


def test_binary_metrics_by_hand() -> None:
    y = [0, 0, 1, 1]
    prob = [0.1, 0.6, 0.4, 0.9]
    m = M.binary_metrics(y, prob)
    # ranks: 3 of 4 positive/negative pairs ordered -> 0.75; AP = 0.5 * 1 + 0.5 * 2/3
    assert m["roc_auc"] == pytest.approx(0.75)
    assert m["pr_auc"] == pytest.approx(0.5 + 1 / 3)
    assert m["f1"] == pytest.approx(0.5)  # one TP, one FP, one FN
    assert m["accuracy"] == pytest.approx(0.5)
    assert M.binary_metrics(y, prob, threshold=0.35)["f1"] == pytest.approx(0.8)  # 2 TP, 1 FP


def test_explicit_predictions_override_threshold() -> None:
    m = M.binary_metrics([0, 1], [0.4, 0.45], pred=np.array([0, 1]))
    assert m["f1"] == 1.0 and m["accuracy"] == 1.0


def test_multiclass_macro_by_hand() -> None:
    y = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]])
    m = M.multiclass_metrics(y, probs)
    assert m["accuracy"] == pytest.approx(0.75)
    # per-class F1: 2/3, 1, 2/3
    assert m["f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    # ROC-AUC per class: 1, 1, 1 (every class-c patient scores above the others on column c)
    assert m["roc_auc"] == pytest.approx(1.0)
    assert M.compute(y, probs)["accuracy"] == m["accuracy"]


def test_absent_classes_leave_every_macro_average_alike() -> None:
    """A fold without class 2: macro F1 skips it as macro ROC/PR-AUC do (it used to count as 0)."""
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
    m = M.multiclass_metrics(y, probs)
    assert m["f1"] == pytest.approx(1.0) and m["roc_auc"] == pytest.approx(1.0)
    assert m["pr_auc"] == pytest.approx(1.0)
    boot = M.weighted_metrics(y, probs, probs.argmax(1), np.ones((1, 4)))
    assert boot["f1"][0] == pytest.approx(1.0) and boot["balanced_accuracy"][0] == pytest.approx(1.0)


def test_undefined_metrics_are_nan_and_json_safe() -> None:
    m = M.binary_metrics([1, 1, 1], [0.2, 0.8, 0.9])
    assert math.isnan(m["roc_auc"]) and math.isnan(m["pr_auc"])
    text = json.dumps(M.json_safe({"a": m, "b": [math.nan, 1.0]}), allow_nan=False)
    assert '"roc_auc": null' in text


def test_best_f1_threshold_separates_perfectly_ranked_data() -> None:
    y = np.array([0, 0, 0, 1, 1])
    prob = np.array([0.1, 0.2, 0.3, 0.35, 0.4])
    t = M.best_f1_threshold(y, prob)
    assert 0.3 < t <= 0.35
    assert M.binary_metrics(y, prob, threshold=t)["f1"] == 1.0
    assert M.best_f1_threshold(np.array([1, 1]), np.array([0.2, 0.3])) == 0.5
