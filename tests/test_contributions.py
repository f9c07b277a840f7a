"""Occlusion contributions: models without attention still get per-patch maps, and they find the signal."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from brcatool import artifacts
from brcatool.artifacts import Workdir
from brcatool.cli.app import app
from brcatool.contributions import contributions
from brcatool.synth import make_prepared_workdir
from brcatool.training import TrainConfig, run_train

runner = CliRunner()


@pytest.fixture(scope="module")
def mean_run(tmp_path_factory):
    """An image-only mean-pooling model on bags whose first patch alone carries the class."""
    root = tmp_path_factory.mktemp("contrib")
    prep = make_prepared_workdir(root, patients=96, patches=8, dim=16, views=1, genes=8, image_signal=6.0,
                                 gene_signal=0.0, signal_patches=1, seed=4)
    run_train(root, TrainConfig(fusion="image", aggregator="mean", epochs=60, folds=3, device="cpu",
                                name="mean"), progress=False)
    return prep, Workdir(root)


def test_mean_pooling_contributions_rank_the_planted_patch_first(mean_run):
    prep, wd = mean_run
    table = contributions(wd.run_dir("mean"), wd, mode="oof")
    assert set(table.columns) == {"patient_id", "slide_id", "patch_index", "weight", "method"}
    assert set(table["method"]) == {"occlusion"}
    oof = artifacts.read_parquet(wd.run_dir("mean") / "oof.parquet", schema="oof")
    right = set(oof.filter(oof["pred"] == oof["target"])["patient_id"])
    assert len(right) >= 0.8 * len(prep.patient_ids)  # the model learned the planted patch
    top = (table.filter(table["patient_id"].is_in(list(right))).sort("weight", descending=True)
           .group_by("patient_id", maintain_order=True).head(1))
    share = float((top["patch_index"] == 0).mean())
    assert share >= 0.9, f"planted patch ranked first for {share:.0%} of correctly predicted patients"
    assert table.height == sum(8 for _ in prep.patient_ids)  # every patch of every OOF patient


def test_evaluate_exports_occlusion_weights_like_attention(mean_run):
    _, wd = mean_run
    out = runner.invoke(app, ["evaluate", "-w", str(wd.root), "--run", "mean", "--bootstrap", "0",
                              "--no-plots", "--top-k", "0", "-q"])
    assert out.exit_code == 0, out.output
    att = artifacts.read_parquet(wd.run_dir("mean") / "eval" / "attention.parquet", schema="attention")
    assert set(att["method"]) == {"occlusion"}
    ref = contributions(wd.run_dir("mean"), wd, mode="oof").sort("patient_id", "slide_id", "patch_index")
    np.testing.assert_allclose(att["weight"].to_numpy(), ref["weight"].to_numpy(), rtol=1e-6, atol=1e-9)


def test_every_image_fusion_gets_finite_contributions(tmp_path):
    from brcatool.models import FUSIONS

    prep = make_prepared_workdir(tmp_path, patients=12, patches=4, dim=8, views=1, genes=8, ragged=True,
                                 seed=1)
    names = [n for n in FUSIONS.names() if FUSIONS.get(n).uses_image]
    assert {"image", "concat", "late", "xattn"} <= set(names)
    for fusion in names:
        run_train(tmp_path, TrainConfig(fusion=fusion, aggregator="mean", epochs=1, folds=2, device="cpu",
                                        name=fusion, hidden=16, heads=2), progress=False)
        table = contributions(Workdir(tmp_path).run_dir(fusion), Workdir(tmp_path), mode="ensemble")
        assert table["patient_id"].n_unique() == len(prep.patient_ids), fusion
        assert np.isfinite(table["weight"].to_numpy()).all(), fusion
        sizes = table.group_by("patient_id").len()["len"].to_numpy()
        assert sizes.min() >= 2 and sizes.max() <= 4  # ragged bags: one row per valid patch


def test_contributions_use_only_the_slides_the_model_was_trained_on(tmp_path):
    """``--slide-types DX``: a frozen (TS) slide of the same tumour sample never gets a weight."""
    import polars as pl

    from brcatool.synth.prepared import add_feature_slide

    pw = make_prepared_workdir(tmp_path, patients=12, patches=3, dim=8, views=1, genes=8, seed=2)
    wd, pid = pw.workdir, pw.patient_ids[0]
    frozen = f"{pid}-01A-01-TS1.0A1B2C3D"
    add_feature_slide(pw, pid, frozen, 4)
    run_train(wd, TrainConfig(fusion="image", aggregator="mean", epochs=1, folds=2, name="dx", hidden=16,
                              slide_types="DX"), progress=False)
    table = contributions(wd.run_dir("dx"), wd, mode="oof")
    assert frozen not in table["slide_id"].to_list()
    assert table.filter(pl.col("patient_id") == pid).height == 3  # its DX patches only
