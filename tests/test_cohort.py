"""Joining artifacts by patient, and the saved stratified split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from brcatool import artifacts, stores
from brcatool.artifacts import Workdir
from brcatool.cohort import get_splits, load_cohort, load_splits, make_splits, save_splits
from brcatool.errors import ArtifactError, InputError
from brcatool.synth import make_prepared_workdir


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cohort")
    return make_prepared_workdir(root, patients=30, patches=6, dim=8, genes=10, slides_per_patient=2,
                                 ragged=True, missing_expression=2, missing_slides=3, seed=4)


def test_load_joins_by_patient(prepared) -> None:
    c = load_cohort(prepared.workdir)
    assert c.patient_ids == sorted(prepared.patient_ids)
    assert [c.classes[t] for t in c.targets] == [prepared.classes[prepared.targets[p]] for p in c.patient_ids]
    no_expr = {c.patient_ids[i] for i in np.flatnonzero(~c.has_expr)}
    no_img = {c.patient_ids[i] for i in np.flatnonzero(~c.has_img)}
    assert no_expr == set(prepared.missing_expression) and no_img == set(prepared.missing_slides)
    assert not c.expression[~c.has_expr].any()
    index = artifacts.read_parquet(prepared.workdir.features_index("synthetic"), schema="features")
    per_patient = dict(index.group_by("patient_id").agg(pl.col("n_patches").sum()).iter_rows())
    for i, p in enumerate(c.patient_ids):
        assert int(c.mask[i].sum()) == per_patient.get(p, 0)
    assert c.features.dtype == np.float16 and c.features.shape[1] == 2
    # the positions map back to the stored arrays: (slide, patch) -> same vector
    i = int(np.flatnonzero(c.has_img)[0])
    n = int(c.mask[i].sum()) - 1
    slide = c.slide_ids[c.patch_slide[i, n]]
    stored = stores.read_features(prepared.workdir, "synthetic", slide)
    assert np.array_equal(c.features[i, :, n], stored[:, c.patch_index[i, n]])
    assert c.encoder["weights"] == "synthetic-v1" and c.encoder["dim"] == 8


def test_split_is_stratified_and_complete(prepared) -> None:
    c = load_cohort(prepared.workdir, images=False)
    s = make_splits(c, folds=3, repeats=2, seed=1)
    assert s.fold.shape == (2, c.n)
    for r in range(2):
        for k in range(3):
            _, va = s.indices(r, k)
            for cls in range(len(c.classes)):
                expected = (c.targets == cls).sum() / 3
                assert abs((c.targets[va] == cls).sum() - expected) <= 1
    assert not np.array_equal(s.fold[0], s.fold[1])
    assert np.array_equal(make_splits(c, folds=3, repeats=2, seed=1).fold, s.fold)


def test_split_keeps_each_patients_slides_in_one_fold(prepared, tmp_path: Path) -> None:
    c = load_cohort(prepared.workdir)
    s = make_splits(c, folds=3, repeats=2, seed=1)
    saved = artifacts.read_json(save_splits(s, tmp_path / "splits.json"))
    index = artifacts.read_parquet(prepared.workdir.features_index("synthetic"), schema="features")
    slide_patient = dict(index.select("slide_id", "patient_id").iter_rows())
    per_patient = index.group_by("patient_id").len()
    assert per_patient["len"].max() == 2 and (per_patient["len"] == 2).sum() >= 10  # the fixture's 2 slides
    for r in range(2):
        rows = [a for a in saved["assignments"] if a["repeat"] == r]
        assert sorted(a["patient_id"] for a in rows) == c.patient_ids  # each patient once per repeat
        # what training sees: the slides behind validation and training patients never overlap
        for k in range(3):
            tr, va = s.indices(r, k)

            def slides_of(rows: np.ndarray) -> set[str]:
                return {c.slide_ids[j] for i in rows for j in c.patch_slide[i][c.mask[i]]}

            va_slides, tr_slides = slides_of(va), slides_of(tr)
            assert va_slides and tr_slides and not va_slides & tr_slides
            assert {slide_patient[x] for x in va_slides} == {c.patient_ids[i] for i in va if c.has_img[i]}


def test_split_is_saved_reused_and_stale_refused(tmp_path: Path) -> None:
    wd = make_prepared_workdir(tmp_path / "w", patients=20, patches=2, dim=4, genes=6, seed=2).workdir
    c = load_cohort(wd, images=False)
    s1, created = get_splits(wd, c, folds=4, seed=3)
    assert created and wd.splits.exists()
    s2, created = get_splits(wd, c, folds=4, seed=99)  # a later run reuses, whatever its seed
    assert not created and np.array_equal(s1.fold, s2.fold)
    assert load_splits(wd.splits).sha256() == s1.sha256()
    with pytest.raises(ArtifactError, match="--folds 4"):
        get_splits(wd, c, folds=5)
    labels = artifacts.read_parquet(wd.labels_table, schema="labels")
    flipped = labels.with_columns(target=pl.when(pl.int_range(pl.len()) == 0).then(1 - pl.col("target"))
                                  .otherwise(pl.col("target")))
    flipped = flipped.with_columns(label=pl.when(pl.col("target") == 1).then(pl.lit("Basal/Her2"))
                                   .otherwise(pl.lit("Luminal")))
    artifacts.write_parquet(flipped, wd.labels_table, schema="labels")
    with pytest.raises(ArtifactError, match="stale"):
        get_splits(wd, load_cohort(wd, images=False), folds=4)
    artifacts.write_parquet(labels.slice(1), wd.labels_table, schema="labels")
    with pytest.raises(ArtifactError, match="stale"):
        get_splits(wd, load_cohort(wd, images=False), folds=4)


def test_encoders_are_never_mixed(tmp_path: Path) -> None:
    wd = make_prepared_workdir(tmp_path / "w", patients=6, patches=2, dim=4, genes=4, seed=1).workdir
    make_prepared_workdir(tmp_path / "other", patients=6, patches=2, dim=5, genes=4, seed=1, encoder="enc2")
    import shutil

    shutil.copytree(tmp_path / "other" / "features" / "enc2", wd.features_dir("enc2"))
    with pytest.raises(InputError, match="--encoder"):
        load_cohort(wd)
    assert load_cohort(wd, encoder="enc2").feat_dim == 5
    with pytest.raises(ArtifactError, match="no features for encoder"):
        load_cohort(wd, encoder="uni")
    # an index whose dims disagree with the manifest = features of several encoders
    man = artifacts.read_json(wd.features_dir("enc2") / "manifest.json")
    man["params"]["dim"] = 4
    artifacts.write_json(wd.features_dir("enc2") / "manifest.json", man)
    with pytest.raises(ArtifactError, match="mixed"):
        load_cohort(wd, encoder="enc2")


def test_missing_artifacts_name_the_stage(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="prep-expr"):
        load_cohort(Workdir(tmp_path))


def test_half_written_prep_expr_outputs_are_refused(tmp_path: Path) -> None:
    """prep-expr removes its manifest before replacing its tables: without it, train must not trust them."""
    prep = make_prepared_workdir(tmp_path / "wd", patients=12, patches=2, dim=4, genes=6, seed=0)
    assert load_cohort(prep.workdir).targets.size == 12
    prep.workdir.stage_manifest("prep-expr").unlink()
    with pytest.raises(ArtifactError, match="prep-expr did not finish"):
        load_cohort(prep.workdir)


def test_unfinished_embed_is_refused(tmp_path: Path) -> None:
    """embed marks its manifest complete last; train must not read a half-written feature store."""
    prep = make_prepared_workdir(tmp_path / "wd", patients=12, patches=2, dim=4, genes=6, seed=0)
    path = prep.workdir.features_dir(prep.encoder) / "manifest.json"
    manifest = artifacts.read_json(path)
    artifacts.write_json(path, {**manifest, "status": "running"})
    with pytest.raises(ArtifactError, match="embedding did not finish"):
        load_cohort(prep.workdir)


def _bag(c, i: int) -> tuple:
    return tuple(c.patch_slide[i][c.mask[i]].tolist())


def test_shuffled_images_are_drawn_per_repeat_within_its_folds(prepared) -> None:
    c = load_cohort(prepared.workdir)
    splits = make_splits(c, folds=3, repeats=3, seed=1)
    shuffled = c.with_shuffled_images(5, groups=splits.fold.T)
    owner = {_bag(c, j): j for j in np.flatnonzero(c.has_img)}
    for r in range(3):
        got = shuffled.for_repeat(r)
        assert np.array_equal(got.has_img, c.has_img) and np.array_equal(got.targets, c.targets)
        moved = 0
        for i in np.flatnonzero(c.has_img):
            j = owner[_bag(got, i)]
            assert splits.fold[r, j] == splits.fold[r, i]  # never across repeat r's folds
            moved += j != i
        assert moved > 0.6 * c.has_img.sum(), (r, moved)  # most bags move in every repeat
    assert all(_bag(shuffled, i) == _bag(shuffled.for_repeat(0), i) for i in range(c.n))


def test_permuted_labels_keep_every_folds_class_counts(prepared) -> None:
    c = load_cohort(prepared.workdir)
    splits = make_splits(c, folds=3, repeats=2, seed=2)
    among = c.has_expr & c.has_img
    perm = c.with_permuted_labels(9, groups=splits.fold.T, among=among)
    for r in range(2):
        y = perm.for_repeat(r).targets
        assert np.array_equal(y[~among], c.targets[~among])  # only the eligible patients' labels move
        assert (y != c.targets).sum() >= 4
        for k in range(3):
            cell = (splits.fold[r] == k) & among
            assert np.array_equal(np.bincount(y[cell], minlength=2),
                                  np.bincount(c.targets[cell], minlength=2))
    assert not np.array_equal(perm.for_repeat(0).targets, perm.for_repeat(1).targets)


def test_a_label_null_within_folds_is_not_biased_low(tmp_path: Path) -> None:
    """No signal at all: a 'model' scoring each fold by its training fold's positive rate. Labels
    permuted across a split stratified on the real labels unbalance the folds, and this score
    then ranks the validation positives low (ROC-AUC well below the real labels' value); within
    folds the null keeps the real run's fold structure exactly."""
    from sklearn.metrics import roc_auc_score

    pw = make_prepared_workdir(tmp_path / "w", patients=60, patches=2, dim=4, genes=5, seed=6)
    c = load_cohort(pw.workdir)
    splits = make_splits(c, folds=5, seed=3)

    def prior_auc(y: np.ndarray) -> float:
        score = np.empty(len(y))
        for k in range(5):
            tr, va = splits.indices(0, k)
            score[va] = y[tr].mean()
        return roc_auc_score(y, score)

    real = prior_auc(c.targets)
    within = [prior_auc(c.with_permuted_labels(s, groups=splits.fold.T).targets) for s in range(40)]
    across = [prior_auc(c.with_permuted_labels(s).targets) for s in range(40)]
    assert np.allclose(within, real)  # the null keeps the real run's fold structure exactly
    assert abs(real - 0.5) < 0.1 and np.mean(across) < real - 0.08  # the old null: biased low
