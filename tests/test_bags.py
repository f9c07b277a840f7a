"""Ragged per-patient bags: the same numbers as the dense padded array, without the padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brcatool.artifacts import Workdir
from brcatool.bags import RaggedBags
from brcatool.cohort import load_cohort
from brcatool.synth import make_prepared_workdir


def _ragged(rng: np.random.Generator, lengths: list[int], views: int = 2, dim: int = 5) -> RaggedBags:
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    data = rng.standard_normal((views, int(offsets[-1]), dim)).astype(np.float16)
    return RaggedBags(data, offsets)


def test_gather_equals_dense_fancy_indexing() -> None:
    rng = np.random.default_rng(0)
    bags = _ragged(rng, [3, 7, 1, 5])
    dense = bags.dense()
    assert dense.shape == bags.shape == (4, 2, 7, 5)
    assert not dense[2, :, 1:].any()  # padding is zeros
    patients = np.array([3, 0, 1])
    pos = np.array([[4, 0, 2, 6], [2, 1, 0, 6], [6, 5, 4, 3]])  # 6 is padding for patients 3 and 0
    view = rng.integers(0, 2, pos.shape)
    got = bags.gather(patients, view, pos)
    assert np.array_equal(got, dense[patients[:, None], view, pos])


def test_permuted_bags_share_data() -> None:
    rng = np.random.default_rng(1)
    bags = _ragged(rng, [2, 4, 3])
    perm = np.array([2, 0, 1])
    shuffled = bags[perm]
    assert shuffled.data is bags.data and np.array_equal(shuffled.dense(), bags.dense()[perm])
    assert shuffled.lengths.tolist() == [3, 2, 4]


def test_load_bags_equals_the_dense_cohort(tmp_path: Path) -> None:
    wd = Workdir(tmp_path)
    make_prepared_workdir(wd, patients=12, patches=9, dim=6, views=2, ragged=True,
                          slides_per_patient=2, missing_slides=2, seed=3)
    dense = load_cohort(wd)
    ragged = load_cohort(wd, ragged=True)
    assert isinstance(ragged.features, RaggedBags) and ragged.features.shape == dense.features.shape
    assert np.array_equal(ragged.features.dense(), dense.features)
    assert ragged.features.data.size < dense.features.size  # no padding stored
    cache = list((wd.features_dir("synthetic") / "bags").glob("*.npy"))
    assert len(cache) == 1
    again = load_cohort(wd, ragged=True)  # the cache is reused, not rebuilt
    assert list((wd.features_dir("synthetic") / "bags").glob("*.npy")) == cache
    assert np.array_equal(again.features.dense(), dense.features)


def _oof(result):  # noqa: ANN001, ANN202 - a TrainResult -> its out-of-fold table
    import polars as pl

    return pl.read_parquet(result.run_dir / "oof.parquet").sort("patient_id", "repeat")


def test_ragged_train_predicts_like_the_dense_path(tmp_path: Path) -> None:
    """Equal bag sizes: the batches are the same tensors, so the predictions are the same numbers."""
    from brcatool.training import TrainConfig, run_train

    wd = Workdir(tmp_path)
    make_prepared_workdir(wd, patients=24, patches=12, dim=8, views=2, seed=5)
    cfg = dict(fusion="image", aggregator="abmil", epochs=3, folds=2, batch_size=8, hidden=16,
               device="cpu", patch_dropout=0.2)
    a, b = (_oof(run_train(wd, TrainConfig(**cfg, name=f"ragged-{r}"), progress=False,
                           cohort=load_cohort(wd, ragged=r))) for r in (False, True))
    prob = [c for c in a.columns if c.startswith("prob")]
    assert a.height == 24 and prob
    assert np.array_equal(a.select(prob).to_numpy(), b.select(prob).to_numpy())


def test_drawn_bag_reads_the_same_patches(tmp_path: Path) -> None:
    """--bag-size K: the ragged batch holds exactly the K patches the dense path keeps, packed left."""
    import torch

    from brcatool.training.batching import Batcher

    wd = Workdir(tmp_path)
    make_prepared_workdir(wd, patients=10, patches=16, dim=4, views=3, ragged=True, seed=2)
    idx = np.arange(10)
    cpu = torch.device("cpu")
    batchers = [Batcher(load_cohort(wd, ragged=r), None, gene=False, image=True, device=cpu, bag_size=5)
                for r in (False, True)]
    for gen in (7, 8):  # training draws (random K, random views)
        out = [bt.batch(idx, generator=torch.Generator().manual_seed(gen), patch_dropout=0.3)
               for bt in batchers]
        d, r = out
        assert r["feats"].shape[1] == 5 < d["feats"].shape[1]  # only the drawn patches are read
        for i in idx:
            assert torch.equal(d["feats"][i][d["mask"][i]], r["feats"][i][r["mask"][i]])
    d, r = (bt.batch(idx) for bt in batchers)  # inference: every patch, whatever --bag-size says
    n_valid = int(load_cohort(wd).mask.sum())
    assert r["feats"].shape[1] == d["feats"].shape[1] > 5 and int(r["mask"].sum()) == n_valid
    assert torch.equal(d["feats"][d["mask"]], r["feats"][r["mask"]])


def test_prediction_batches_bound_the_padded_patches(tmp_path: Path, monkeypatch) -> None:
    """Prediction sees every patch, so full-slide bags go a few patients at a time: each chunk holds at
    most PREDICT_PATCH_BUDGET padded patches (a larger bag alone), in order, and every patient once."""
    import torch

    from brcatool.training import batching

    wd = Workdir(tmp_path)
    make_prepared_workdir(wd, patients=12, patches=16, dim=4, views=1, ragged=True, seed=3)
    cohort = load_cohort(wd, ragged=True)
    bt = batching.Batcher(cohort, None, gene=False, image=True, device=torch.device("cpu"))
    idx = np.arange(12)
    sizes = cohort.mask.sum(1)
    for budget in (1, 20, 40, 10_000):
        monkeypatch.setattr(batching, "PREDICT_PATCH_BUDGET", budget)
        chunks = batching.predict_batches(bt, idx, batch_size=5)
        assert np.array_equal(np.concatenate(chunks), idx)
        for c in chunks:
            assert len(c) <= 5
            assert len(c) == 1 or len(c) * sizes[c].max() <= budget
    assert len(batching.predict_batches(bt, idx, batch_size=5)) == 3  # the budget never binds here
