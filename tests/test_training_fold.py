"""One fold's inner split (early stopping and the threshold): under --split site it keeps whole
sites on one side, as the outer split does."""

from __future__ import annotations

import numpy as np

from brcatool.training import fold as F


def test_inner_split_keeps_sites_whole_when_there_are_two_or_more() -> None:
    rng = np.random.default_rng(0)
    idx = np.arange(5, 65)
    sites = np.array([f"s{i % 7}" for i in range(70)])
    y = rng.integers(0, 2, len(idx))
    tr, va = F._inner_split(idx, y, 0.2, seed=3, groups=sites)
    assert len(va) and len(tr) and not set(sites[tr]) & set(sites[va])
    assert sorted(np.r_[tr, va].tolist()) == idx.tolist()
    one = np.array(["s0"] * 70)  # one site: by patient, as without sites
    assert [a.tolist() for a in F._inner_split(idx, y, 0.2, seed=3, groups=one)] == \
        [a.tolist() for a in F._inner_split(idx, y, 0.2, seed=3)]


def test_train_fold_passes_the_sites_under_split_site(tmp_path, monkeypatch) -> None:
    from brcatool.cohort import load_cohort
    from brcatool.splits import tcga_site
    from brcatool.synth import make_prepared_workdir
    from brcatool.training import TrainConfig

    pw = make_prepared_workdir(tmp_path / "w", patients=24, patches=2, dim=4, genes=6, seed=1)
    c = load_cohort(pw.workdir, images=False)
    seen = []
    real = F._inner_split

    def spy(idx, y, frac, seed, groups=None):
        seen.append(groups)
        return real(idx, y, frac, seed, groups=groups)

    monkeypatch.setattr(F, "_inner_split", spy)
    tr, va = np.arange(18), np.arange(18, 24)
    for split in ("patient", "site"):
        F.train_fold(c, tr, va, TrainConfig(fusion="gene", epochs=1, hidden=8, split=split))
    assert seen[0] is None and list(seen[1]) == [tcga_site(p) for p in c.patient_ids]
