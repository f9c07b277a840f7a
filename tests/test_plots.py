"""Every figure is a real, non-empty PNG of plausible size (binary and multiclass)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import polars as pl

from brcatool import plots


def _png(path: Path, min_side: int = 100) -> np.ndarray:
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imread(str(path))
    assert img is not None and min(img.shape[:2]) >= min_side
    assert img.std() > 5  # something was drawn, not a blank canvas
    return img


def test_curves_and_confusion_multiclass(tmp_path: Path) -> None:
    """Binary figures are checked on a real run in test_evaluation; here one-vs-rest curves."""
    C = 3
    rng = np.random.default_rng(0)
    y = rng.integers(0, C, 50)
    probs = rng.dirichlet(np.ones(C), 50) + np.eye(C)[y]
    probs /= probs.sum(1, keepdims=True)
    classes = ["A", "B", "C"]
    for fn, name in ((plots.pr_curve, "pr"), (plots.roc_curve, "roc"), (plots.calibration, "cal")):
        assert fn(y, probs, classes, tmp_path / f"{name}.png") == tmp_path / f"{name}.png"
        _png(tmp_path / f"{name}.png")
    _png(plots.confusion(y, probs.argmax(1), classes, tmp_path / "cm.png"))
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries


def test_training_curves_and_ablation_bars(tmp_path: Path) -> None:
    rows = [{"repeat": 0, "fold": k, "epoch": e, "train_loss": 1 / e + k * 0.1, "val_loss": 1.2 / e,
             "val_metric": 0.5 + 0.04 * e} for k in range(3) for e in range(1, 8)]
    img = _png(plots.training_curves(pl.DataFrame(rows), tmp_path / "train.png"))
    assert img.shape[1] > img.shape[0]  # two panels side by side
    means = {"F1": [0.6, 0.7, 0.8], "PR-AUC": [0.7, 0.8, float("nan")]}
    sds = {"F1": [0.05, 0.04, 0.03], "PR-AUC": [0.1, 0.1, 0.1]}
    _png(plots.ablation_bars(["gene", "image", "xattn"], means, sds, tmp_path / "bars.png"))


def test_heatmap_and_montage(tmp_path: Path) -> None:
    thumb = np.full((120, 160, 3), 230, np.uint8)
    boxes = np.array([[10, 10, 20, 20], [40, 10, 20, 20], [70, 50, 20, 20]], float)
    _png(plots.heatmap(thumb, boxes, np.array([0.2, 0.5, 0.3]), tmp_path / "heat.png"))
    rng = np.random.default_rng(1)
    patches = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(5)]
    img = _png(plots.montage(patches, [f"w={i}" for i in range(5)], tmp_path / "m.png", cols=3, side=64), 64)
    assert img.shape[:2] == (2 * (64 + 18), 3 * 64)
