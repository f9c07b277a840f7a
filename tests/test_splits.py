"""Splits beyond the patient K-fold: site-preserved folds, repeats extended on the saved split,
and which slides join a patient's bag (TCGA sample and slide types)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from brcatool.cohort import load_cohort
from brcatool.errors import InputError
from brcatool.splits import (
    get_splits,
    load_splits,
    make_splits,
    patient_sites,
    site_partition,
    splits_path,
    tcga_site,
)
from brcatool.synth import make_prepared_workdir
from brcatool.synth.prepared import add_feature_slide


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):
    return make_prepared_workdir(tmp_path_factory.mktemp("splits") / "w", patients=90, patches=2, dim=4,
                                 genes=6, seed=5)


def test_site_split_keeps_every_site_on_one_side(prepared) -> None:
    wd = prepared.workdir
    c = load_cohort(wd, images=False)
    splits, created = get_splits(wd, c, folds=4, repeats=2, by="site")
    assert created and splits_path(wd, "site").exists() and not wd.splits.exists()
    sites = np.array([tcga_site(p) for p in c.patient_ids])
    assert splits.sites == list(sites) and sites[0] == c.patient_ids[0][5:7]
    for r in range(2):
        for k in range(4):
            tr, va = splits.indices(r, k)
            assert len(va) and not set(sites[tr]) & set(sites[va]), (r, k)
            # balanced by label as far as whole sites allow: both classes in every validation fold
            assert len(np.unique(c.targets[va])) == 2
        share = [c.targets[splits.fold[r] == k].mean() for k in range(4)]
        assert max(share) - min(share) < 0.35
    # repeats are other partitions of the sites, not the same one with other fold labels
    assert site_partition(splits.fold[0], splits.sites) != site_partition(splits.fold[1], splits.sites)
    again, created = get_splits(wd, c, folds=4, repeats=2, by="site")
    assert not created and np.array_equal(again.fold, splits.fold)
    assert load_splits(splits_path(wd, "site")).by == "site"


def test_site_repeats_are_distinct_partitions_or_refused(prepared) -> None:
    c = load_cohort(prepared.workdir, images=False)
    splits = make_splits(c, folds=3, repeats=5, by="site")
    parts = {site_partition(f, splits.sites) for f in splits.fold}
    assert len(parts) == 5
    four = [f"s{i % 4}" for i in range(c.n)]  # 4 sites in 4 folds: one partition only
    assert make_splits(c, folds=4, repeats=1, by="site", sites=four).repeats == 1
    with pytest.raises(InputError, match="only 1 different"):
        make_splits(c, folds=4, repeats=2, by="site", sites=four)


def test_sites_from_a_named_column_or_refused(prepared, tmp_path: Path) -> None:
    c = load_cohort(prepared.workdir, images=False)
    table = tmp_path / "clinical.tsv"
    pl.DataFrame({"sample": [f"{p}-01A" for p in c.patient_ids],
                  "center": [f"c{i % 5}" for i in range(c.n)]}).write_csv(table, separator="\t")
    assert patient_sites(c, f"{table}:center") == [f"c{i % 5}" for i in range(c.n)]
    with pytest.raises(InputError, match="no column 'centre'"):
        patient_sites(c, f"{table}:centre")
    other = dataclasses.replace(c, patient_ids=[f"P{i}" for i in range(c.n)])
    with pytest.raises(InputError, match="--site-column"):
        patient_sites(other)


def test_more_repeats_extend_the_saved_split_keeping_its_first(tmp_path: Path) -> None:
    wd = make_prepared_workdir(tmp_path / "w", patients=30, patches=2, dim=4, genes=6, seed=2).workdir
    c = load_cohort(wd, images=False)
    one, _ = get_splits(wd, c, folds=3, seed=1)
    three, created = get_splits(wd, c, folds=3, repeats=3)
    assert created and three.repeats == 3 and np.array_equal(three.fold[0], one.fold[0])
    assert load_splits(wd.splits).repeats == 3
    head, created = get_splits(wd, c, folds=3, repeats=1)  # a one-repeat run uses the first
    assert not created and head.repeats == 1 and np.array_equal(head.fold, one.fold)


def test_only_primary_tumour_slides_join_by_default(tmp_path: Path) -> None:
    pw = make_prepared_workdir(tmp_path / "w", patients=12, patches=3, dim=4, genes=6, seed=3)
    wd, pid = pw.workdir, pw.patient_ids[0]
    add_feature_slide(pw, pid, f"{pid}-11A-01-TS1.0A1B2C3D", 4)
    i = pw.patient_ids.index(pid)
    default = load_cohort(wd)
    assert default.left_out == {"sample type 11 (solid tissue normal)": 1}
    assert default.mask[i].sum() == 3
    everything = load_cohort(wd, keep_all_samples=True)
    assert everything.left_out == {} and everything.mask[i].sum() == 7
    diagnostic = load_cohort(wd, keep_all_samples=True, slide_types=["DX"])
    assert diagnostic.left_out == {"slide type TS": 1} and diagnostic.mask[i].sum() == 3


def test_a_class_at_one_site_is_refused_before_any_fold_trains(tmp_path: Path, monkeypatch) -> None:
    from brcatool.training import TrainConfig, run_train, stage

    pw = make_prepared_workdir(tmp_path / "w", patients=30, patches=2, dim=4, genes=6, seed=8)
    c = load_cohort(pw.workdir, images=False)
    pos = c.classes[1]
    others = iter(["b", "c", "d"] * c.n)
    centers = ["a" if c.classes[t] == pos else next(others) for t in c.targets]
    table = tmp_path / "clinical.tsv"
    pl.DataFrame({"sample": c.patient_ids, "center": centers}).write_csv(table, separator="\t")
    trained = []
    real = stage.train_fold
    monkeypatch.setattr(stage, "train_fold", lambda *a, **k: trained.append(1) or real(*a, **k))
    cfg = TrainConfig(fusion="gene", folds=3, epochs=1, split="site", site_column=f"{table}:center", name="s")
    with pytest.raises(InputError, match=rf"no '{pos}' patient left to train on.*site\(s\) a") as err:
        run_train(pw.workdir, cfg, progress=False)
    assert "--split patient" in err.value.fix and not trained
