"""Stain normalisation and augmented views: exact maths on tiny tensors and stain mixtures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brcatool.encoders.augment import Macenko, augment, view_params
from brcatool.errors import InputError


def test_augment_identity_rotation_and_jitter():
    x = torch.rand(3, 3, 8, 8)
    ident = torch.tensor([[1, 1, 1, 0, 0]] * 3, dtype=torch.float32)
    assert torch.allclose(augment(x, ident), x, atol=1e-5)
    rot = ident.clone()
    rot[1, 4] = 1  # rotate sample 1 only
    y = augment(x, rot)
    assert torch.allclose(y[1], torch.rot90(x[1], 1, dims=(1, 2)), atol=1e-5)
    assert torch.allclose(y[0], x[0], atol=1e-5)
    p = torch.from_numpy(view_params(0, "slide", 1, 3))
    assert p.shape == (3, 5) and not torch.allclose(augment(x, p), x, atol=1e-3)
    assert torch.equal(augment(x, p.numpy()), augment(x, p))  # host params, as the loop passes
    assert np.array_equal(view_params(0, "slide", 1, 3), view_params(0, "slide", 1, 3))
    assert not np.array_equal(view_params(0, "slide", 1, 3), view_params(0, "slide", 2, 3))


def test_macenko_maps_another_stain_and_strength_onto_the_reference():
    rng = np.random.default_rng(0)
    conc = rng.uniform(0.2, 1.2, (1024, 2))  # per-pixel H and E amounts

    def stained(he: list[list[float]], c: np.ndarray) -> np.ndarray:
        return np.clip(240 * np.exp(-c @ np.asarray(he).T), 0, 255).reshape(32, 32, 3).astype(np.uint8)

    ref = stained([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]], conc)
    other = stained([[0.55, 0.20], [0.80, 0.90], [0.25, 0.35]], conc * 1.4)  # other lab, darker
    norm = Macenko.fit(ref)
    before = np.abs(other.astype(float) - ref).mean()
    assert before > 20
    assert np.abs(norm(other).astype(float) - ref).mean() < 2
    assert np.abs(norm(ref).astype(float) - ref).mean() < 2
    blank = np.full((16, 16, 3), 250, np.uint8)
    assert np.array_equal(norm(blank), blank)  # no tissue: untouched
    with pytest.raises(InputError, match="too little tissue"):
        Macenko.fit(blank)
