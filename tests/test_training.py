"""Training under cross-validation: honest (per-fold recipe), able to learn, deterministic."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from brcatool import artifacts, config
from brcatool.cli.app import app
from brcatool.cohort import load_cohort, load_splits
from brcatool.errors import ArtifactError, InputError
from brcatool.expression import Recipe
from brcatool.synth import make_prepared_workdir
from brcatool.training import TrainConfig, load_fold_model, predict, run_train

FAST = dict(folds=3, epochs=25, lr=3e-3, hidden=16, heads=2, gene_tokens=2, batch_size=16, patience=6)


@pytest.fixture(scope="module")
def signal(tmp_path_factory: pytest.TempPathFactory):
    return make_prepared_workdir(tmp_path_factory.mktemp("signal"), patients=80, patches=6, dim=16,
                                 genes=24, gene_signal=1.5, image_signal=1.5, ragged=True, seed=1)


@pytest.fixture(scope="module")
def trained(signal):
    return run_train(signal.workdir, TrainConfig(fusion="late", aggregator="abmil", name="late", **FAST),
                     progress=False)


def test_planted_signal_is_learned(trained) -> None:
    assert trained.metrics["roc_auc"] > 0.85
    assert trained.n_patients == 80 and len(trained.per_fold) == 3


@pytest.mark.parametrize(("fusion", "aggregator"), [("concat", "mean"), ("gene", "mean"), ("xattn", "abmil"),
                                                   ("late", "abmil")])
def test_random_labels_give_chance(tmp_path: Path, fusion: str, aggregator: str) -> None:
    wd = make_prepared_workdir(tmp_path / "w", patients=120, patches=6, dim=16, genes=24, gene_signal=0.0,
                               image_signal=0.0, ragged=True, seed=2).workdir
    res = run_train(wd, TrainConfig(fusion=fusion, aggregator=aggregator, **FAST), progress=False)
    assert 0.35 <= res.metrics["roc_auc"] <= 0.65


def test_feature_scale_does_not_drown_the_gene_signal(tmp_path: Path) -> None:
    """Strong gene signal, no image signal: x100 or x0.01 patch features (encoders differ that
    much) must leave concat and xattn as good as gene alone."""
    wd = make_prepared_workdir(tmp_path / "w", patients=80, patches=6, dim=16, genes=24, gene_signal=1.5,
                               image_signal=0.0, seed=3).workdir
    cohort = load_cohort(wd)
    gene = run_train(wd, TrainConfig(fusion="gene", name="gene", **FAST), progress=False,
                     cohort=cohort).metrics["roc_auc"]
    assert gene > 0.85
    for scale in (100.0, 0.01):
        scaled = dataclasses.replace(cohort, features=(cohort.features.astype(np.float32) * scale)
                                     .astype(np.float16))
        for fusion in ("concat", "xattn"):
            got = run_train(wd, TrainConfig(fusion=fusion, name=f"{fusion}-{scale}", **FAST), progress=False,
                            cohort=scaled).metrics["roc_auc"]
            assert got >= gene - 0.03, (fusion, scale, got, gene)


def test_run_outputs_follow_the_contract(signal, trained) -> None:
    run = trained.run_dir
    for name in ("config.yaml", "manifest.json", "splits_ref.json", "epochs.csv", "metrics.json",
                 "fold_0/model.pt", "fold_2/model.pt"):
        assert (run / name).exists(), name
    oof = artifacts.read_parquet(run / "oof.parquet", schema="oof")
    assert oof.columns == ["patient_id", "repeat", "fold", "target", "prob", "pred", "cal_prob"]
    assert sorted(oof["patient_id"].to_list()) == signal.patient_ids  # each patient exactly once
    splits = load_splits(signal.workdir.splits)
    fold_of = dict(zip(splits.patient_ids, splits.fold[0], strict=True))
    assert all(fold_of[p] == k for p, k in oof.select("patient_id", "fold").iter_rows())
    ref = artifacts.read_json(run / "splits_ref.json")
    assert ref["sha256"] == splits.sha256()
    epochs = pl.read_csv(run / "epochs.csv")
    assert {"fold", "epoch", "train_loss", "val_loss", "val_metric"} <= set(epochs.columns)
    mets = artifacts.read_json(run / "metrics.json")
    assert len(mets["per_fold"]) == 3 and set(mets["pooled"]) == {"f1", "pr_auc", "roc_auc", "accuracy"}


def test_calibration_undoes_the_class_weighting(signal, trained) -> None:
    """--pos-weight auto trains on odds x w: cal_prob = sigmoid(logit - log w), w = the training
    fold's neg/pos ratio; metrics.json says which probabilities Brier describes."""
    oof = artifacts.read_parquet(trained.run_dir / "oof.parquet", schema="oof")
    cohort = load_cohort(signal.workdir, images=False)
    splits = load_splits(signal.workdir.splits)
    for k in range(3):
        fm = load_fold_model(trained.run_dir / f"fold_{k}" / "model.pt")
        tr, _ = splits.indices(0, k)
        part = oof.filter(pl.col("fold") == k)
        p, c = part["prob"].to_numpy(), part["cal_prob"].to_numpy()
        w = np.exp(fm.class_log_weight[1])
        assert 1.0 < w < (cohort.targets[tr] == 0).sum() / (cohort.targets[tr] == 1).sum() * 1.5
        logit = np.log(p / (1 - p))
        assert np.allclose(c, 1 / (1 + np.exp(-(logit - np.log(w)))), atol=1e-6)
    mets = artifacts.read_json(trained.run_dir / "metrics.json")
    assert mets["calibration"]["method"] == "prior-correction"


def test_recipe_is_fitted_on_the_training_fold_only(signal, trained) -> None:
    cohort = load_cohort(signal.workdir, images=False)
    splits = load_splits(signal.workdir.splits)
    fm = load_fold_model(trained.run_dir / "fold_1" / "model.pt")
    train_idx, _ = splits.indices(0, 1)
    own = Recipe.from_settings(cohort.recipe_settings).fit(cohort.expression[train_idx], cohort.genes)
    everyone = Recipe.from_settings(cohort.recipe_settings).fit(cohort.expression, cohort.genes)
    assert np.allclose(fm.recipe.mean, own.mean) and np.allclose(fm.recipe.std, own.std)
    assert not np.allclose(fm.recipe.mean, everyone.mean)
    assert fm.recipe.n_fit == len(train_idx)


def test_saved_folds_predict_alone_and_export_attention(signal, trained, tmp_path: Path) -> None:
    pred = predict(trained.run_dir, mode="oof")
    oof = artifacts.read_parquet(trained.run_dir / "oof.parquet", schema="oof").sort("patient_id")
    assert np.allclose(pred.table.sort("patient_id")["prob"].to_numpy(), oof["prob"].to_numpy(), atol=1e-5)
    sums = pred.attention.group_by("patient_id").agg(pl.col("weight").sum())["weight"].to_numpy()
    assert len(sums) == 80 and np.allclose(sums, 1.0, atol=1e-4)
    other = make_prepared_workdir(tmp_path / "ext", patients=30, patches=6, dim=16, genes=24,
                                  gene_signal=1.5, image_signal=1.5, seed=1)
    ext = predict(trained.run_dir, other.workdir)
    assert ext.table.height == 30 and (ext.table["n_models"] == 3).all()
    alien = make_prepared_workdir(tmp_path / "alien", patients=10, patches=6, dim=16, genes=24, seed=1,
                                  weights="uni:abc")
    with pytest.raises(ArtifactError, match="trained on"):
        predict(trained.run_dir, alien.workdir)


def test_same_seed_same_oof_and_runs_are_not_clobbered(tmp_path: Path) -> None:
    wd = make_prepared_workdir(tmp_path / "w", patients=24, patches=4, dim=8, genes=10, seed=3,
                               ragged=True).workdir
    cfg = dict(fusion="xattn", folds=3, epochs=3, hidden=8, heads=2, patch_dropout=0.25, seed=5)
    a = run_train(wd, TrainConfig(name="a", **cfg), progress=False)
    b = run_train(wd, TrainConfig(name="b", **cfg), progress=False)
    oa = pl.read_parquet(a.run_dir / "oof.parquet")
    assert oa.equals(pl.read_parquet(b.run_dir / "oof.parquet"))
    assert run_train(wd, TrainConfig(name="a", **cfg), progress=False).skipped
    with pytest.raises(ArtifactError, match="other parameters"):
        run_train(wd, TrainConfig(name="a", **{**cfg, "epochs": 4}), progress=False)
    c = run_train(wd, TrainConfig(name="a", overwrite=True, **{**cfg, "seed": 6}), progress=False)
    assert not pl.read_parquet(c.run_dir / "oof.parquet").equals(oa)


def test_multiclass_repeats_and_tuned_threshold(tmp_path: Path) -> None:
    wd = make_prepared_workdir(tmp_path / "w", patients=30, patches=3, dim=8, genes=10, task="pam50",
                               seed=4).workdir
    res = run_train(wd, TrainConfig(fusion="concat", folds=2, repeats=2, epochs=2, hidden=8), progress=False)
    oof = artifacts.read_parquet(res.run_dir / "oof.parquet", schema="oof")
    probs = oof.select([c for c in oof.columns if c.startswith("prob_")]).to_numpy()
    assert probs.shape == (60, 5) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (res.run_dir / "repeat_1_fold_1" / "model.pt").exists()
    wd2 = make_prepared_workdir(tmp_path / "b", patients=24, patches=3, dim=8, genes=10, seed=4).workdir
    res2 = run_train(wd2, TrainConfig(fusion="gene", folds=2, epochs=2, hidden=8, threshold="tuned"),
                     progress=False)
    assert all(0 < f["threshold"] < 1 for f in res2.per_fold)


def test_missing_modalities_drop_or_mask(tmp_path: Path) -> None:
    wd = make_prepared_workdir(tmp_path / "w", patients=24, patches=3, dim=8, genes=10, seed=5,
                               missing_expression=3, missing_slides=3).workdir
    base = dict(fusion="concat", folds=2, epochs=2, hidden=8)
    dropped = run_train(wd, TrainConfig(name="drop", **base), progress=False)
    masked = run_train(wd, TrainConfig(name="mask", missing="mask", modality_dropout=0.2, **base),
                       progress=False)
    assert dropped.n_patients == 18 and masked.n_patients == 24
    gene = run_train(wd, TrainConfig(name="gene", **{**base, "fusion": "gene"}), progress=False)
    assert gene.n_patients == 21


def test_bad_options_are_one_line_errors(signal) -> None:
    with pytest.raises(InputError, match="tuned"):
        run_train(signal.workdir, TrainConfig(threshold="high"), progress=False)
    with pytest.raises(InputError, match="drop or mask"):
        run_train(signal.workdir, TrainConfig(missing="impute"), progress=False)


def test_cli_trains_and_reports(tmp_path: Path) -> None:
    wd = make_prepared_workdir(tmp_path / "w", patients=16, patches=3, dim=8, genes=8, seed=6).workdir
    runner = CliRunner()
    args = ["train", "-w", str(wd.root), "--fusion", "image", "--aggregator", "mean", "--folds", "2",
            "--epochs", "2", "--hidden", "8", "--name", "cli"]
    # training a small model runs on one torch thread and restores the caller's count afterwards;
    # start from a count it would never choose (3) so a missing restore shows
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        res = runner.invoke(app, args)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert res.exit_code == 0, res.output
    assert "roc_auc" in res.output and (wd.run_dir("cli") / "fold_1" / "model.pt").exists()
    res = runner.invoke(app, [*args[:-2], "--name", "cli2", "--fusion", "fancy"])
    assert res.exit_code == 1 and "unknown fusion 'fancy'" in res.output
    # the written config repeats the run: same parameters -> recognised as done
    written = wd.run_dir("cli") / "config.yaml"
    res = runner.invoke(app, ["train", "-w", str(wd.root), "--config", str(written)])
    assert res.exit_code == 0 and "already exists" in res.output, res.output


def test_paper_preset_and_site_split_from_the_cli(tmp_path: Path) -> None:
    """--paper sets the study's protocol except what is given explicitly; --split site trains on
    splits-site.json (no site on both sides) and says so in metrics.json."""
    from brcatool.splits import splits_path

    wd = make_prepared_workdir(tmp_path / "w", patients=60, patches=40, dim=8, genes=12, seed=8).workdir
    args = ["--paper", "--folds", "3", "--fusion", "image", "--epochs", "2", "--hidden", "8",
            "--split", "site"]
    res = CliRunner().invoke(app, ["train", "-w", str(wd.root), *args, "--name", "p"])
    assert res.exit_code == 0, res.output
    cfg = config.load_yaml(wd.run_dir("p") / "config.yaml")
    assert (cfg["optimizer"], cfg["weight_decay"], cfg["pos_weight"], cfg["aggregator"], cfg["bag_size"],
            cfg["folds"]) == ("adam", 0.0, "none", "mean", 35, 3)
    assert artifacts.read_json(wd.run_dir("p") / "metrics.json")["split"] == "site"
    splits = load_splits(splits_path(wd, "site"))
    oof = artifacts.read_parquet(wd.run_dir("p") / "oof.parquet", schema="oof")
    site_of = dict(zip(splits.patient_ids, splits.sites, strict=True))
    for k in range(3):
        val = set(oof.filter(pl.col("fold") == k)["patient_id"].to_list())
        train = set(splits.patient_ids) - val
        assert not {site_of[p] for p in val} & {site_of[p] for p in train}
    fm = load_fold_model(wd.run_dir("p") / "fold_0" / "model.pt")
    assert fm.bag_size == 35 and not any(fm.class_log_weight)


def test_non_finite_numbers_fail_the_fold_with_one_line(signal) -> None:
    cohort = load_cohort(signal.workdir)
    bad = cohort.features.copy()
    bad[:, :, 0, 0] = np.inf  # e.g. an encoder that overflowed float16
    broken = dataclasses.replace(cohort, features=bad)
    with pytest.raises(InputError, match="not finite") as err:
        run_train(signal.workdir, TrainConfig(fusion="image", name="inf", **{**FAST, "epochs": 2}),
                  progress=False, cohort=broken)
    assert "'inf'" in err.value.one_line() and "\n" not in err.value.one_line()
    assert not signal.workdir.run_dir("inf").exists()
