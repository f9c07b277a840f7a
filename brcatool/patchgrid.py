"""Where patches go: the tissue mask, the candidate grid, a patient's budget and the sampling.

Pure functions of arrays (no slide files, no workdir), shared by ``tile`` and anything that needs the
same grid (ROI filtering, coordinate import).
"""

from __future__ import annotations

import hashlib

import numpy as np

MIN_SATURATION = 20  # Otsu on a blank slide splits noise; tissue is more saturated than this
MAX_GRAY = 220  # ... and darker than this


# --------------------------------------------------------------------------- tissue and grid
def tissue_mask(rgb: np.ndarray, *, method: str = "otsu-sat", min_area_px: float = 0) -> np.ndarray:
    """Boolean tissue mask of an RGB overview: Otsu, median blur, close/open, small parts dropped."""
    import cv2

    if method == "otsu-gray":
        chan = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        t, _ = cv2.threshold(chan, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        mask = chan <= min(t, MAX_GRAY)
    else:
        chan = np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1])
        t, _ = cv2.threshold(chan, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        mask = chan > max(t, MIN_SATURATION)
    m = cv2.medianBlur(mask.astype(np.uint8) * 255, 5)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, kernel)
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    mask = m > 0
    # drop the parts smaller than min_area_px, each inside its own bounding box (the few small
    # parts cost far less than relabelling the whole overview)
    for i in np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] < max(min_area_px, 1)) + 1:
        x, y, w, h = stats[i, :4]
        box = mask[y:y + h, x:x + w]
        box[labels[y:y + h, x:x + w] == i] = False
    return mask


def candidate_grid(mask: np.ndarray, dims0: tuple[int, int], size0: float, stride0: float,
                   min_tissue: float) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 top-left corners (row-major) of grid patches with enough tissue, and fractions."""
    import cv2

    w0, h0 = dims0
    mh, mw = mask.shape
    xs = np.arange(0, w0 - size0 + 1e-6, stride0)
    ys = np.arange(0, h0 - size0 + 1e-6, stride0)
    if not len(xs) or not len(ys):
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    integral = cv2.integral(mask.astype(np.uint8)).astype(np.int64)

    def bounds(v: np.ndarray, d0: int, dm: int) -> tuple[np.ndarray, np.ndarray]:
        a = np.clip(np.round(v * dm / d0), 0, dm - 1).astype(np.int64)
        b = np.clip(np.round((v + size0) * dm / d0), 0, dm).astype(np.int64)
        return a, np.maximum(b, a + 1)

    x0, x1 = bounds(xs, w0, mw)
    y0, y1 = bounds(ys, h0, mh)
    y0g, x0g = np.meshgrid(y0, x0, indexing="ij")
    y1g, x1g = np.meshgrid(y1, x1, indexing="ij")
    tissue = integral[y1g, x1g] - integral[y0g, x1g] - integral[y1g, x0g] + integral[y0g, x0g]
    frac = (tissue / ((y1g - y0g) * (x1g - x0g))).astype(np.float32)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    keep = frac >= max(min_tissue, 1e-9)
    xy = np.stack([np.floor(xx[keep]), np.floor(yy[keep])], axis=1).astype(np.int64)
    return xy, frac[keep]


# --------------------------------------------------------------------------- budget and sampling
def stable_hash(text: str) -> int:
    """A hash that is the same in every process and Python version (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def slide_rng(seed: int, patient_id: str, slide_id: str) -> np.random.Generator:
    return np.random.default_rng([seed % 2**63, stable_hash(patient_id), stable_hash(slide_id)])


def allocate(budget: int | None, counts: dict[str, int]) -> dict[str, int]:
    """Split a patient's budget over its slides in proportion to their candidates.

    Largest remainders (ties by slide id) make the split deterministic; ``None`` takes all.
    """
    total = sum(counts.values())
    if budget is None or total <= budget:
        return dict(counts)
    quota = {s: budget * c / total for s, c in counts.items()}
    out = {s: int(np.floor(q)) for s, q in quota.items()}
    left = budget - sum(out.values())
    for s in sorted(counts, key=lambda s: (-(quota[s] - out[s]), s))[:left]:
        out[s] += 1
    return out


def select(xy: np.ndarray, k: int, method: str, rng: np.random.Generator) -> np.ndarray:
    """Indices (ascending = row-major) of ``k`` candidates: random, spread (farthest point) or all."""
    n = len(xy)
    if method == "all" or k >= n:
        return np.arange(n)
    if k <= 0:
        return np.zeros(0, np.int64)
    if method == "random":
        return np.sort(rng.choice(n, size=k, replace=False))
    pts = xy.astype(np.float64)
    chosen = [int(rng.integers(n))]
    dist = np.sum((pts - pts[chosen[0]]) ** 2, axis=1)
    for _ in range(k - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.sum((pts - pts[nxt]) ** 2, axis=1))
    return np.sort(np.asarray(chosen, np.int64))
