"""The ablate stage: identical folds for every model, the summary table, paired differences and
the sanity checks (permuted labels near chance)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import polars as pl
import pytest
from sklearn import metrics as skm
from typer.testing import CliRunner

from brcatool import artifacts
from brcatool.ablation import AblateConfig, run_ablate
from brcatool.cli.app import app
from brcatool.cohort import load_splits
from brcatool.errors import ArtifactError
from brcatool.synth import make_prepared_workdir

FAST = dict(folds=3, epochs=10, lr=3e-3, hidden=16, heads=2, batch_size=16, patience=6, bootstrap=100,
            run_plots=False)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):
    return make_prepared_workdir(tmp_path_factory.mktemp("ablate") / "w", patients=48, patches=6, dim=16,
                                 genes=20, gene_signal=1.5, image_signal=1.5, seed=7)


@pytest.fixture(scope="module")
def ablated(prepared):
    cfg = AblateConfig(fusions=["gene", "image", "xattn"], sanity=True, name="t", **FAST)
    return run_ablate(prepared.workdir, cfg, progress=False)


def test_every_model_uses_the_saved_split(prepared, ablated) -> None:
    saved = json.loads(prepared.workdir.splits.read_text())
    fold_of = {a["patient_id"]: a["fold"] for a in saved["assignments"] if a["repeat"] == 0}
    assert len(ablated.runs) == 5
    for label, run_dir in ablated.runs.items():
        oof = artifacts.read_parquet(run_dir / "oof.parquet", schema="oof")
        got = dict(oof.select("patient_id", "fold").iter_rows())
        assert got == fold_of, label  # same patients, same folds, for models and sanity runs alike


def test_summary_files(prepared, ablated) -> None:
    out = prepared.workdir.ablation_dir("t")
    summary = artifacts.read_parquet(out / "summary.parquet", schema="summary")
    assert summary["model"].to_list() == ["gene", "image", "xattn", "xattn (permuted labels)",
                                          "xattn (shuffled images)"]
    assert summary["kind"].to_list() == ["model"] * 3 + ["permuted-labels", "shuffled-images"]
    for m in ("f1", "pr_auc", "roc_auc", "mcc"):
        assert summary[f"{m}_mean"].is_finite().all()
        assert (summary[f"{m}_ci_low"] <= summary[f"{m}_ci_high"]).all()
    md = (out / "summary.md").read_text()
    assert "| model | F1 | PR-AUC | ROC-AUC | MCC |" in md
    assert all(name in md for name in summary["model"].to_list())
    img = cv2.imread(str(out / "metrics.png"))
    assert img is not None and img.std() > 5
    split_sha = load_splits(prepared.workdir.splits).sha256()
    assert artifacts.read_json(out / "manifest.json")["split_sha256"] == ablated.split_sha256 == split_sha


def _fold_pr_auc(run_dir) -> dict[int, float]:
    oof = artifacts.read_parquet(run_dir / "oof.parquet", schema="oof")
    return {k: skm.average_precision_score(p["target"], p["prob"]) for (k,), p in oof.group_by("fold")}


def test_paired_differences_against_best_unimodal(ablated) -> None:
    rows = {r["model"]: r for r in ablated.summary.to_dicts()}
    ref = ablated.reference
    other = "image" if ref == "gene" else "gene"
    assert ref in ("gene", "image") and rows[ref]["pr_auc_mean"] >= rows[other]["pr_auc_mean"]
    base = _fold_pr_auc(ablated.runs[ref])
    theirs = _fold_pr_auc(ablated.runs[other])
    assert rows[other]["pr_auc_diff_mean"] == pytest.approx(np.mean([theirs[k] - base[k] for k in range(3)]))
    mine = _fold_pr_auc(ablated.runs["xattn"])
    diffs = [mine[k] - base[k] for k in range(3)]
    assert rows["xattn"]["pr_auc_diff_mean"] == pytest.approx(np.mean(diffs))
    assert rows["xattn"]["pr_auc_diff_sd"] == pytest.approx(np.std(diffs, ddof=1))
    assert rows["xattn"]["pr_auc_diff_wins"] == sum(d > 0 for d in diffs)


def test_sanity_permutation_lands_near_chance(ablated) -> None:
    rows = {r["kind"] if r["kind"] != "model" else r["model"]: r for r in ablated.summary.to_dicts()}
    perm, real = rows["permuted-labels"], rows["xattn"]
    assert 0.3 < perm["roc_auc_pooled"] < 0.7 and abs(perm["mcc_pooled"]) < 0.3
    assert real["roc_auc_pooled"] > 0.8 and real["roc_auc_pooled"] > perm["roc_auc_pooled"] + 0.15
    marker = artifacts.read_json(ablated.runs["xattn (permuted labels)"] / "sanity.json")
    assert marker["kind"] == "permuted-labels"


def test_rerun_reuses_runs_and_other_params_refuse(prepared, ablated) -> None:
    cfg = AblateConfig(fusions=["gene", "image", "xattn"], sanity=True, name="t", **FAST)
    runs_root = prepared.workdir.runs_dir

    def models() -> dict:
        return {p: p.stat().st_mtime_ns for d in ablated.runs.values() for p in d.glob("fold_*/model.pt")}

    before, dirs = models(), sorted(p.name for p in runs_root.iterdir())
    assert len(before) == 5 * 3  # 5 runs x 3 folds
    again = run_ablate(prepared.workdir, cfg, progress=False)
    # nothing was trained again: the same run folders, every fold model untouched
    assert again.runs == ablated.runs and sorted(p.name for p in runs_root.iterdir()) == dirs
    assert models() == before
    assert again.summary.equals(ablated.summary)
    with pytest.raises(ArtifactError, match="other parameters"):
        run_ablate(prepared.workdir, AblateConfig(**{**cfg.__dict__, "epochs": 3}), progress=False)


def test_two_aggregators_give_one_image_row_each_on_the_saved_split(prepared) -> None:
    tiny = {**FAST, "epochs": 2, "bootstrap": 0, "plots": False}
    cfg = AblateConfig(fusions=["gene", "image"], aggregators=["mean", "abmil"], name="aggs", **tiny)
    res = run_ablate(prepared.workdir, cfg, progress=False)
    rows = {r["model"]: r for r in res.summary.to_dicts()}
    assert list(rows) == ["gene", "image-mean", "image-abmil"]
    assert rows["image-mean"]["aggregator"] == "mean" and rows["image-abmil"]["aggregator"] == "abmil"
    assert rows["image-mean"]["run"] != rows["image-abmil"]["run"]
    saved = json.loads(prepared.workdir.splits.read_text())
    fold_of = {a["patient_id"]: a["fold"] for a in saved["assignments"] if a["repeat"] == 0}
    assert set(res.runs) == set(rows)
    for label, run_dir in res.runs.items():
        oof = artifacts.read_parquet(run_dir / "oof.parquet", schema="oof")
        assert dict(oof.select("patient_id", "fold").iter_rows()) == fold_of, label
        assert artifacts.read_json(run_dir / "splits_ref.json")["sha256"] == res.split_sha256, label
    assert res.split_sha256 == load_splits(prepared.workdir.splits).sha256()


def test_cli(prepared) -> None:
    runner = CliRunner()
    root = str(prepared.workdir.root)
    result = runner.invoke(app, ["ablate", "-w", root, "--fusions", "gene,image", "--folds", "3", "--epochs",
                                 "3", "--hidden", "16", "--heads", "2", "--bootstrap", "20", "--name", "cli",
                                 "--no-run-plots"])
    assert result.exit_code == 0, result.output
    assert "Δ PR-AUC" in result.output and "summary.md" in result.output
    table = pl.read_parquet(prepared.workdir.ablation_dir("cli") / "summary.parquet")
    assert table["model"].to_list() == ["gene", "image"]
    bad = runner.invoke(app, ["ablate", "-w", root, "--fusions", "gene,nope"])
    assert bad.exit_code == 1 and "nope" in bad.output and "Traceback" not in bad.output
