"""Image transforms before the encoder: Macenko stain normalisation and seeded augmented views.

Views are drawn per (seed, slide, view, patch), so stored features do not depend on batch size,
worker count or device; ``train`` then samples a stored view per step without re-running the CNN.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import numpy as np

from brcatool.errors import InputError

if TYPE_CHECKING:
    import torch

#: Colour-jitter half-ranges (brightness, contrast, saturation as factors 1 +/- x; hue in turns).
JITTER = {"brightness": 0.15, "contrast": 0.15, "saturation": 0.15, "hue": 0.04}


# --------------------------------------------------------------------------- stain normalisation
class Macenko:
    """Macenko et al. 2009 stain normalisation, numpy only (Io=240, alpha=1, beta=0.15)."""

    io, alpha, beta = 240.0, 1.0, 0.15

    def __init__(self, he: np.ndarray, max_c: np.ndarray):
        self.he, self.max_c = np.asarray(he, np.float64), np.asarray(max_c, np.float64)

    @classmethod
    def stains(cls, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(H&E matrix 3x2, 99th-percentile concentrations, concentrations 2xN) or None if no tissue."""
        od = -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1) / cls.io)
        tissue = od[(od > cls.beta).all(axis=1)]
        if len(tissue) < 64:
            return None
        _, vecs = np.linalg.eigh(np.cov(tissue.T))
        plane = tissue @ vecs[:, 1:3]
        phi = np.arctan2(plane[:, 1], plane[:, 0])
        lo, hi = np.percentile(phi, [cls.alpha, 100 - cls.alpha])
        v1 = vecs[:, 1:3] @ np.array([np.cos(lo), np.sin(lo)])
        v2 = vecs[:, 1:3] @ np.array([np.cos(hi), np.sin(hi)])
        he = np.stack([v1, v2] if v1[0] > v2[0] else [v2, v1], axis=1)
        he *= np.sign(he.sum(axis=0, keepdims=True)) + (he.sum(axis=0, keepdims=True) == 0)
        conc = np.linalg.lstsq(he, od.T, rcond=None)[0]
        return he, np.percentile(conc, 99, axis=1), conc

    @classmethod
    def fit(cls, rgb: np.ndarray) -> Macenko:
        found = cls.stains(rgb)
        if found is None:
            raise InputError("the stain reference image has too little tissue to fit Macenko",
                             fix="pass --stain-ref with a tissue-rich H&E image")
        return cls(found[0], found[1])

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """Normalised uint8 copy; patches without enough tissue are returned unchanged."""
        found = self.stains(rgb)
        if found is None:
            return rgb
        _, max_c, conc = found
        conc = conc * (self.max_c / np.maximum(max_c, 1e-6))[:, None]
        out = self.io * np.exp(-self.he @ conc)
        return np.clip(out.T, 0, 255).reshape(rgb.shape).astype(np.uint8)


# --------------------------------------------------------------------------- augmented views
def view_params(seed: int, slide_id: str, view: int, n: int) -> np.ndarray:
    """(n, 5) jitter factors + dihedral index per patch, fixed by (seed, slide, view, patch)."""
    rng = np.random.default_rng([seed, view, zlib.crc32(slide_id.encode())])
    j = rng.uniform(-1, 1, (n, 4)) * np.array([JITTER[k] for k in JITTER])
    j[:, :3] += 1.0
    return np.concatenate([j, rng.integers(0, 8, (n, 1))], axis=1).astype(np.float32)


_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def augment(x: torch.Tensor, p: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Per-sample colour jitter and right-angle rotation/flip of a [0,1] batch (B,3,H,W).

    Vectorised so it runs on the GPU as a few tensor ops; hue is a rotation in YIQ space.
    ``p`` (B,5, from :func:`view_params`) should be on the host: the hue matrices and
    dihedral groups are worked out there, so the GPU never has to be waited on.
    """
    import torch

    host = p.detach().cpu().numpy() if isinstance(p, torch.Tensor) else np.asarray(p)
    jit = torch.from_numpy(np.ascontiguousarray(host[:, :3])).to(x.device, x.dtype,
                                                                  non_blocking=True)
    lum = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    b, c, s = (jit[:, i].view(-1, 1, 1, 1) for i in range(3))
    x = (x * b).clamp(0, 1)
    mean = (x * lum).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = ((x - mean) * c + mean).clamp(0, 1)
    gray = (x * lum).sum(1, keepdim=True)
    x = ((x - gray) * s + gray).clamp(0, 1)
    theta = 2 * np.pi * host[:, 3].astype(np.float64)
    rot = np.zeros((len(theta), 3, 3))
    rot[:, 0, 0] = 1
    rot[:, 1, 1] = rot[:, 2, 2] = np.cos(theta)
    rot[:, 1, 2], rot[:, 2, 1] = -np.sin(theta), np.sin(theta)
    m = torch.from_numpy(np.linalg.inv(_YIQ) @ rot @ _YIQ).to(x.device, x.dtype)
    x = torch.einsum("bij,bjhw->bihw", m, x).clamp(0, 1)
    out = torch.empty_like(x)
    k = host[:, 4].astype(np.int64)
    for d in np.unique(k).tolist():
        sel = torch.from_numpy(np.flatnonzero(k == d)).to(x.device)
        y = torch.rot90(x[sel], d % 4, dims=(2, 3))
        out[sel] = torch.flip(y, dims=(3,)) if d >= 4 else y
    return out
