"""PNG figures of a run, an external cohort or an ablation (matplotlib Agg, no display needed).

Every function takes plain arrays, writes one PNG atomically and returns its path. Figures are
built with ``matplotlib.figure.Figure`` (no pyplot global state), so they are safe in threads and
tests. Multiclass curves are one-vs-rest, one line per class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brcatool.artifacts import atomic_path

DPI = 110


def _figure(w: float = 5.0, h: float = 4.2) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=DPI, layout="constrained")


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _columns(y: np.ndarray, probs: np.ndarray,
             classes: Sequence[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, 0/1 truth, score) per curve: the positive class for binary, every class otherwise."""
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        probs = np.stack([1 - probs, probs], axis=1)
    cols = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    return [(str(classes[c]), (y == c).astype(np.int64), probs[:, c]) for c in cols
            if (y == c).any() and (y != c).any()]


def pr_curve(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], path: str | Path, *,
             title: str = "Precision-recall") -> Path:
    """Precision-recall curve(s) with average precision and the chance line (prevalence)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig = _figure()
    ax = fig.add_subplot()
    for label, truth, score in _columns(y, probs, classes):
        precision, recall, _ = precision_recall_curve(truth, score)
        ap = average_precision_score(truth, score)
        line, = ax.step(recall, precision, where="post", label=f"{label} (AP {ap:.3f})")
        ax.axhline(truth.mean(), color=line.get_color(), lw=0.8, ls=":")
    _finish(ax, "recall", "precision", title)
    return _save(fig, path)


def roc_curve(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], path: str | Path, *,
              title: str = "ROC") -> Path:
    """ROC curve(s) with AUC and the diagonal."""
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as _roc

    fig = _figure()
    ax = fig.add_subplot()
    for label, truth, score in _columns(y, probs, classes):
        fpr, tpr, _ = _roc(truth, score)
        ax.plot(fpr, tpr, label=f"{label} (AUC {roc_auc_score(truth, score):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    _finish(ax, "false positive rate", "true positive rate", title)
    return _save(fig, path)


def calibration(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], path: str | Path, *,
                bins: int = 10, title: str = "Calibration") -> Path:
    """Reliability diagram (observed frequency per predicted-probability bin, quantile bins)."""
    from sklearn.calibration import calibration_curve

    fig = _figure()
    ax = fig.add_subplot()
    for label, truth, score in _columns(y, probs, classes):
        n_bins = max(2, min(bins, len(truth) // 5))
        frac, mean = calibration_curve(truth, score, n_bins=n_bins, strategy="quantile")
        ax.plot(mean, frac, marker="o", ms=3, label=label)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="perfect")
    _finish(ax, "mean predicted probability", "observed frequency", title)
    return _save(fig, path)


def _finish(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")


def confusion(y: np.ndarray, pred: np.ndarray, classes: Sequence[str], path: str | Path, *,
              title: str = "Confusion matrix") -> Path:
    """Counts with row-normalised colour (recall per true class)."""
    from sklearn.metrics import confusion_matrix

    C = len(classes)
    cm = confusion_matrix(np.asarray(y), np.asarray(pred), labels=list(range(C)))
    rows = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    fig = _figure(1.6 + 0.9 * C, 1.2 + 0.9 * C)
    ax = fig.add_subplot()
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(C):
        for j in range(C):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if rows[i, j] > 0.5 else "black", fontsize=9)
    ax.set(xticks=range(C), yticks=range(C), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(classes, rotation=30, ha="right", fontsize=8)
    ax.set_yticklabels(classes, fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of true class")
    return _save(fig, path)


def training_curves(epochs: Any, path: str | Path, *, title: str = "Training") -> Path:
    """Per fold: training and inner-validation loss, and the inner-validation metric, by epoch.

    ``epochs``: a polars DataFrame with fold, epoch, train_loss, val_loss, val_metric (and repeat).
    """
    fig = _figure(9.0, 3.8)
    ax_loss, ax_metric = fig.subplots(1, 2)
    several = "repeat" in epochs.columns and epochs["repeat"].n_unique() > 1
    keys = ["repeat", "fold"] if several else ["fold"]
    for i, (key, part) in enumerate(sorted(epochs.group_by(keys), key=lambda g: g[0])):
        part = part.sort("epoch")
        label = ("repeat {} fold {}" if several else "fold {}").format(*key)
        color = f"C{i % 10}"
        ep = part["epoch"].to_numpy()
        ax_loss.plot(ep, part["train_loss"].to_numpy(), color=color, lw=1, label=f"{label} train")
        ax_loss.plot(ep, part["val_loss"].to_numpy(), color=color, lw=1, ls="--")
        ax_metric.plot(ep, part["val_metric"].to_numpy(), color=color, lw=1, label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss (solid train, dashed inner val)", title=title)
    ax_metric.set(xlabel="epoch", ylabel="inner-validation ROC-AUC", title="Validation metric")
    ax_metric.legend(fontsize=7)
    return _save(fig, path)


def ablation_bars(models: Sequence[str], means: Mapping[str, Sequence[float]],
                  sds: Mapping[str, Sequence[float]], path: str | Path, *,
                  title: str = "Ablation (mean ± sd over folds)") -> Path:
    """Grouped bars: one group per model, one bar per metric, sd error bars."""
    metrics = list(means)
    fig = _figure(max(6.0, 1.1 * len(models) + 2), 4.2)
    ax = fig.add_subplot()
    x = np.arange(len(models))
    width = 0.8 / max(1, len(metrics))
    for i, m in enumerate(metrics):
        mu = np.nan_to_num(np.asarray(means[m], dtype=float))
        sd = np.nan_to_num(np.asarray(sds.get(m, [0.0] * len(models)), dtype=float))
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, mu, width, yerr=sd, capsize=2, label=m)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(x)
    ax.set_xticklabels(models, rotation=25, ha="right", fontsize=8)
    ax.set(ylabel="score", title=title, ylim=(min(0.0, ax.get_ylim()[0]), 1.2))  # legend above 1
    ax.legend(fontsize=7, ncols=min(4, len(metrics)), loc="upper left")
    return _save(fig, path)


def heatmap(thumb: np.ndarray, boxes: np.ndarray, weights: np.ndarray, path: str | Path, *,
            title: str = "") -> Path:
    """Patch weights drawn on a slide thumbnail (OpenCV, fast for many slides).

    ``boxes`` (n, 4) = x, y, w, h in thumbnail px. Colour = weight scaled from the slide's lowest
    to highest patch weight (inferno), blended over the tissue; the colour bar shows both ends.
    """
    import cv2

    img = np.ascontiguousarray(thumb[..., :3]).astype(np.uint8)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if max(img.shape[:2]) < 512:  # small QC thumbnails: enlarge so patches stay visible
        f = 512 / max(img.shape[:2])
        size = (round(img.shape[1] * f), round(img.shape[0] * f))
        img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
        boxes = boxes * f
    h, w = img.shape[:2]
    weights = np.asarray(weights, dtype=np.float64)
    wmin, wmax = (float(weights.min()), float(weights.max())) if len(weights) else (0.0, 0.0)
    span = wmax - wmin
    level = (weights - wmin) / span if span > 1e-12 else np.full(len(weights), 0.5)
    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_INFERNO)[:, 0, ::-1]
    overlay, hit = img.copy(), np.zeros((h, w), bool)
    for (x, y, bw, bh), v in zip(np.round(boxes).astype(int), level, strict=True):
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + max(bw, 1), w), min(y + max(bh, 1), h)
        if x1 > x0 and y1 > y0:
            overlay[y0:y1, x0:x1] = lut[int(v * 255)]
            hit[y0:y1, x0:x1] = True
    out = img.copy()
    out[hit] = (0.4 * img[hit] + 0.6 * overlay[hit]).astype(np.uint8)
    bar_w, pad, top = 16, 50, 22
    canvas = np.full((h + top, w + bar_w + pad, 3), 255, np.uint8)
    canvas[top:, :w] = out
    grad = lut[np.linspace(255, 0, h).astype(int)]
    canvas[top:, w + 6:w + 6 + bar_w] = grad[:, None, :]
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(canvas, f"{wmax:.3f}", (w + 4, top + 10), font, 0.3, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, f"{wmin:.3f}", (w + 4, top + h - 3), font, 0.3, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(canvas, title[:90], (3, 15), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return _png_cv2(canvas, path)


def _png_cv2(rgb: np.ndarray, path: str | Path) -> Path:
    import cv2

    path = Path(path)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if ok:
        with atomic_path(path) as tmp:
            tmp.write_bytes(buf.tobytes())
    return path


def montage(images: Sequence[np.ndarray], labels: Sequence[str], path: str | Path, *,
            cols: int = 4, side: int = 160) -> Path:
    """Patches in a grid with a caption each (OpenCV: hundreds of patients stay fast)."""
    import cv2

    n = max(1, len(images))
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    cap = 18
    canvas = np.full((rows * (side + cap), cols * side, 3), 255, np.uint8)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        r, c = divmod(i, cols)
        tile = cv2.resize(np.ascontiguousarray(img[..., :3]), (side, side), interpolation=cv2.INTER_AREA)
        y0 = r * (side + cap)
        canvas[y0:y0 + side, c * side:(c + 1) * side] = tile
        cv2.putText(canvas, label, (c * side + 3, y0 + side + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return _png_cv2(canvas, path)
