"""The evaluate stage on a real trained run: metrics agree with scikit-learn, files, patch weights,
external cohorts, re-runs, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import polars as pl
import pytest
from sklearn import metrics as skm
from typer.testing import CliRunner

from brcatool import artifacts, stores
from brcatool.cli.app import app
from brcatool.errors import ArtifactError
from brcatool.evaluation import EvaluateConfig, run_evaluate
from brcatool.synth import make_prepared_workdir
from brcatool.training import TrainConfig, run_train

FAST = dict(folds=3, epochs=12, lr=3e-3, hidden=16, heads=2, gene_tokens=2, batch_size=16, patience=6)
EVAL = dict(run="xattn", bootstrap=200, top_k=3, heatmaps=True)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):
    """A trainable workdir plus a patch store and QC thumbnails, as tile would leave them."""
    pw = make_prepared_workdir(tmp_path_factory.mktemp("eval") / "main", patients=36, patches=6, dim=16,
                               genes=20, gene_signal=0.7, image_signal=0.7, ragged=True, seed=3)
    wd = pw.workdir
    index = artifacts.read_parquet(wd.features_index(pw.encoder), schema="features")
    rng = np.random.default_rng(0)
    wd.qc_dir.mkdir(parents=True, exist_ok=True)
    for sid, n in index.select("slide_id", "n_patches").iter_rows():
        stores.write_patches(wd, sid, rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8))
        cv2.imwrite(str(wd.qc_dir / f"{sid}.png"), np.full((64, 64, 3), 200, np.uint8))
    run_train(wd, TrainConfig(fusion="xattn", aggregator="abmil", name="xattn", **FAST), progress=False)
    return pw


@pytest.fixture(scope="module")
def evaluated(prepared):
    return run_evaluate(prepared.workdir, EvaluateConfig(**EVAL), progress=False)


def test_oof_metrics_agree_with_sklearn(prepared, evaluated) -> None:
    oof = artifacts.read_parquet(prepared.workdir.run_dir("xattn") / "oof.parquet", schema="oof")
    y, p, pred = oof["target"].to_numpy(), oof["prob"].to_numpy(), oof["pred"].to_numpy()
    ref = {"f1": skm.f1_score(y, pred), "pr_auc": skm.average_precision_score(y, p),
           "roc_auc": skm.roc_auc_score(y, p), "mcc": skm.matthews_corrcoef(y, pred),
           "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
           # Brier describes the probabilities with --pos-weight auto undone (cal_prob), as metrics.json says
           "brier": skm.brier_score_loss(y, oof["cal_prob"].to_numpy())}
    assert evaluated.calibration["method"] == "prior-correction"
    for k, v in ref.items():
        assert evaluated.pooled[k] == pytest.approx(v), k
        lo, hi = evaluated.ci[k]
        assert lo - 1e-9 <= evaluated.pooled[k] <= hi + 1e-9, k
    folds = [skm.roc_auc_score(part["target"], part["prob"]) for _, part in oof.group_by("fold")]
    assert evaluated.fold_mean["roc_auc"] == pytest.approx(np.mean(folds))
    assert evaluated.fold_sd["roc_auc"] == pytest.approx(np.std(folds, ddof=1))
    assert evaluated.n_patients == 36 and len(evaluated.per_fold) == 3
    assert 0.6 < evaluated.pooled["roc_auc"] < 1.0  # signal found, not perfect: CIs have width
    assert evaluated.ci["roc_auc"][1] - evaluated.ci["roc_auc"][0] > 0.02


def test_metrics_written_to_run_and_eval_folder(prepared, evaluated) -> None:
    run = prepared.workdir.run_dir("xattn")
    full = artifacts.read_json(run / "eval" / "metrics.json")
    assert full["bootstrap"] == 200 and len(full["per_fold"]) == 3 and full["scope"] == "oof"
    summary = artifacts.read_json(run / "metrics.json")
    assert "per_fold" in summary  # train's content is kept
    assert summary["evaluation"]["pooled"]["mcc"] == pytest.approx(evaluated.pooled["mcc"])
    assert summary["evaluation"]["ci95"]["roc_auc"] == pytest.approx(list(evaluated.ci["roc_auc"]))
    for name in ("config.yaml", "manifest.json"):
        assert (run / "eval" / name).is_file()


def test_plots_written_and_non_empty(evaluated) -> None:
    names = {p.name for p in evaluated.plots}
    assert names == {"pr_curve.png", "roc_curve.png", "confusion.png", "calibration.png",
                     "training_curves.png"}
    for p in evaluated.plots:
        img = cv2.imread(str(p))
        assert img is not None and img.std() > 5, p


def test_attention_weights_sum_to_one_per_patient(prepared, evaluated) -> None:
    att = artifacts.read_parquet(evaluated.attention, schema="attention")
    assert att.columns == ["patient_id", "slide_id", "patch_index", "weight", "method"]
    assert set(att["method"]) == {"attention"}
    sums = att.group_by("patient_id").agg(pl.col("weight").sum())["weight"].to_numpy()
    assert len(sums) == 36 and np.allclose(sums, 1.0, atol=1e-4)
    assert (att["weight"] >= 0).all()
    index = artifacts.read_parquet(prepared.workdir.features_index(prepared.encoder), schema="features")
    n_of = dict(index.select("slide_id", "n_patches").iter_rows())
    per_slide = att.group_by("slide_id").agg(pl.len(), pl.col("patch_index").max())
    for sid, count, top in per_slide.iter_rows():
        assert count == n_of[sid] and top == n_of[sid] - 1  # every patch once, no padding rows


def test_topk_montages_and_heatmaps(prepared, evaluated) -> None:
    out = evaluated.out_dir
    assert evaluated.montages == 36 and len(list((out / "topk").glob("*.png"))) == 36
    assert evaluated.heatmaps == prepared.n_slides
    assert len(list((out / "heatmaps").glob("*.png"))) == prepared.n_slides
    img = cv2.imread(str(next((out / "topk").glob("*.png"))))
    assert img.shape[1] == 3 * 160  # top-3 patches side by side


def test_rerun_skips_and_other_params_refuse(prepared, evaluated) -> None:
    again = run_evaluate(prepared.workdir, EvaluateConfig(**EVAL), progress=False)
    assert again.skipped and again.pooled == pytest.approx(evaluated.pooled)
    assert again.ci == evaluated.ci
    with pytest.raises(ArtifactError, match="other parameters"):
        run_evaluate(prepared.workdir, EvaluateConfig(**{**EVAL, "bootstrap": 50}), progress=False)
    with pytest.raises(ArtifactError, match="no finished run"):
        run_evaluate(prepared.workdir, EvaluateConfig(run="nope"), progress=False)


def test_reloaded_undefined_fold_metrics_stay_nan(prepared, evaluated) -> None:
    """JSON stores an undefined fold metric as null (F1, MCC and AUC of a fold with one class are
    NaN: ``test_metrics_ci``); reloading it must give NaN again, so ablate's paired fold
    differences work on a re-run."""
    import math

    from brcatool.evaluation import load_result

    path = evaluated.out_dir / "metrics.json"
    original = path.read_text()
    body = json.loads(original)
    body["per_fold"][0]["mcc"] = None
    path.write_text(json.dumps(body))
    try:
        again = load_result(evaluated.run_dir, evaluated.out_dir)
    finally:
        path.write_text(original)
    assert math.isnan(again.per_fold[0]["mcc"])
    assert again.per_fold[1]["mcc"] == pytest.approx(evaluated.per_fold[1]["mcc"], nan_ok=True)


def test_external_cohort_end_to_end(prepared, tmp_path: Path) -> None:
    other = make_prepared_workdir(tmp_path / "other", patients=20, patches=5, dim=16, genes=20, seed=4)
    cfg = EvaluateConfig(run="xattn", on=str(other.workdir.root), bootstrap=100)
    res = run_evaluate(prepared.workdir, cfg, progress=False)
    assert res.out_dir == prepared.workdir.run_dir("xattn") / "external" / "other"
    assert res.scope == "external:other" and res.n_patients == 20
    preds = artifacts.read_parquet(res.out_dir / "predictions.parquet", schema="oof")
    assert sorted(preds["patient_id"].to_list()) == other.patient_ids
    assert (preds["n_models"] == 3).all() and (preds["fold"] == -1).all()
    assert [f["n"] for f in res.per_fold] == [20, 20, 20]  # every fold model scored alone
    y, p = preds["target"].to_numpy(), preds["prob"].to_numpy()
    assert res.pooled["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert len(res.plots) == 4 and all(q.stat().st_size > 1000 for q in res.plots)
    att = artifacts.read_parquet(res.attention, schema="attention")
    assert np.allclose(att.group_by("patient_id").agg(pl.col("weight").sum())["weight"].to_numpy(), 1.0,
                       atol=1e-4)
    assert res.montages == 0 and any("patches.zarr" in n for n in res.notes)  # no patch store: skipped
    assert artifacts.read_json(res.out_dir / "metrics.json")["n_patients"] == 20
    # --pos-weight auto: Brier (value and CI alike) describes the probabilities with the weighting undone
    from brcatool.cohort import load_cohort
    from brcatool.training import correct_probs, fold_model_paths, load_fold_model

    fms = [load_fold_model(q) for q in fold_model_paths(prepared.workdir.run_dir("xattn"))]
    assert all(np.any(fm.class_log_weight) for fm in fms)  # the weighting is really there
    cal = preds["cal_prob"].to_numpy()
    assert not np.allclose(cal, p)
    assert res.pooled["brier"] == pytest.approx(skm.brier_score_loss(y, cal))
    assert res.ci["brier"][0] <= res.pooled["brier"] <= res.ci["brier"][1]
    external = load_cohort(other.workdir)
    for fm, f in zip(fms, res.per_fold, strict=True):
        idx, probs, _ = fm.predict(external, device="cpu")
        fixed = correct_probs(probs, fm.class_log_weight)[:, 1]
        assert f["brier"] == pytest.approx(skm.brier_score_loss(external.targets[idx], fixed))
    # by hand: each saved fold model with its own training-fold recipe, probabilities averaged
    import torch

    from brcatool.expression import Recipe

    cohort = load_cohort(other.workdir)
    feats = torch.from_numpy(cohort.features[:, 0].astype(np.float32))
    mask, has_e, has_i = (torch.from_numpy(a) for a in (cohort.mask, cohort.has_expr, cohort.has_img))

    def ensemble(refit: bool) -> np.ndarray:
        out = []
        for path in fold_model_paths(prepared.workdir.run_dir("xattn")):
            fm = load_fold_model(path)
            recipe = Recipe.from_dict(fm.recipe.to_dict())
            if refit:  # what a leaky external evaluation would do
                recipe = Recipe.from_settings(cohort.recipe_settings).fit(cohort.expression, cohort.genes)
            expr = recipe.transform(cohort.expression, genes=cohort.genes)
            expr = torch.from_numpy(expr.astype(np.float32))
            with torch.no_grad():
                out.append(torch.sigmoid(fm.model(expr, feats, mask, has_e, has_i)["logits"][:, 0]).numpy())
        return np.mean(out, axis=0)

    got = preds.sort("patient_id")["prob"].to_numpy()
    assert np.allclose(got, ensemble(refit=False), atol=1e-5)
    assert not np.allclose(got, ensemble(refit=True), atol=1e-3)


def test_external_with_other_classes_refuses(prepared, tmp_path: Path) -> None:
    other = make_prepared_workdir(tmp_path / "pam50", patients=20, patches=4, dim=16, genes=20,
                                  task="pam50", seed=5)
    with pytest.raises(ArtifactError, match="classes"):
        run_evaluate(prepared.workdir, EvaluateConfig(run="xattn", on=str(other.workdir.root)),
                     progress=False)


def test_cli(prepared, evaluated) -> None:
    runner = CliRunner()
    args = ["evaluate", "-w", str(prepared.workdir.root), "--run", "xattn", "--bootstrap", "200",
            "--top-k", "3", "--heatmaps"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "MCC" in result.output and "Brier" in result.output and "already exists" in result.output
    bad = runner.invoke(app, ["evaluate", "-w", str(prepared.workdir.root), "--run", "nope"])
    assert bad.exit_code == 1 and "no finished run" in bad.output and "Traceback" not in bad.output
