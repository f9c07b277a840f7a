"""The ablate stage: identical folds for every model, every model scored on the same patients
(the fixture lacks a modality for some), the summary table, paired differences and their
significance, and the sanity checks (permuted labels near chance, a label-permutation null)."""

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
    return make_prepared_workdir(tmp_path_factory.mktemp("ablate") / "w", patients=54, patches=6, dim=16,
                                 genes=20, gene_signal=1.5, image_signal=1.5, seed=7, missing_expression=3,
                                 missing_slides=3)


@pytest.fixture(scope="module")
def ablated(prepared):
    cfg = AblateConfig(fusions=["gene", "image", "xattn"], sanity=True, permutations=3, name="t", **FAST)
    return run_ablate(prepared.workdir, cfg, progress=False)


def _common(prepared) -> set[str]:
    return set(prepared.patient_ids) - set(prepared.missing_expression) - set(prepared.missing_slides)


def test_every_model_uses_the_saved_split(prepared, ablated) -> None:
    saved = json.loads(prepared.workdir.splits.read_text())
    fold_of = {a["patient_id"]: a["fold"] for a in saved["assignments"] if a["repeat"] == 0}
    assert len(ablated.runs) == 5
    for label, run_dir in ablated.runs.items():
        oof = artifacts.read_parquet(run_dir / "oof.parquet", schema="oof")
        got = dict(oof.select("patient_id", "fold").iter_rows())
        assert all(fold_of[p] == k for p, k in got.items()), label  # the saved folds, for every run
    # each model saw the patients having its modalities; the sanity runs those of xattn
    own = {label: len(artifacts.read_parquet(d / "oof.parquet", schema="oof"))
           for label, d in ablated.runs.items()}
    assert own["gene"] == 51 and own["image"] == 51 and own["xattn"] == 48
    assert own["xattn (shuffled images)"] == own["xattn (permuted labels)"] == 48


def test_every_row_is_scored_on_the_same_patients(prepared, ablated) -> None:
    rows = {r["model"]: r for r in ablated.summary.to_dicts()}
    assert ablated.n_common == len(_common(prepared)) == 48
    assert {r["n_patients"] for r in rows.values()} == {48}
    assert rows["gene"]["n_left_out"] == 3 and rows["xattn"]["n_left_out"] == 0
    md = (prepared.workdir.ablation_dir("t") / "summary.md").read_text()
    assert "same **48 patients**" in md
    for r in rows.values():  # pooled values sit inside their own CI
        for m in ("f1", "pr_auc", "roc_auc", "mcc"):
            assert r[f"{m}_ci_low"] - 1e-9 <= r[f"{m}_pooled"] <= r[f"{m}_ci_high"] + 1e-9, (r["model"], m)


def test_summary_files(prepared, ablated) -> None:
    out = prepared.workdir.ablation_dir("t")
    summary = artifacts.read_parquet(out / "summary.parquet", schema="summary")
    assert summary["model"].to_list() == ["gene", "image", "xattn", "xattn (permuted labels)",
                                          "xattn (shuffled images)"]
    assert summary["kind"].to_list() == ["model"] * 3 + ["permuted-labels", "shuffled-images"]
    for m in ("f1", "pr_auc", "roc_auc", "mcc"):
        assert summary[f"{m}_mean"].is_finite().all() and summary[f"{m}_pooled"].is_finite().all()
        assert (summary[f"{m}_ci_low"] <= summary[f"{m}_ci_high"]).all()
    md = (out / "summary.md").read_text()
    assert "| model | F1 | PR-AUC | ROC-AUC | MCC | Δ PR-AUC vs" in md and "Fold mean ± sd" in md
    assert all(name in md for name in summary["model"].to_list())
    img = cv2.imread(str(out / "metrics.png"))
    assert img is not None and img.std() > 5
    split_sha = load_splits(prepared.workdir.splits).sha256()
    assert artifacts.read_json(out / "manifest.json")["split_sha256"] == ablated.split_sha256 == split_sha


def _oof(run_dir, keep: set[str]):
    oof = artifacts.read_parquet(run_dir / "oof.parquet", schema="oof")
    return oof.filter(pl.col("patient_id").is_in(sorted(keep)))


def _fold_pr_auc(run_dir, keep: set[str]) -> dict[int, float]:
    return {k: skm.average_precision_score(p["target"], p["prob"]) for (k,), p in _oof(run_dir, keep)
            .group_by("fold")}


def test_paired_differences_against_best_unimodal(prepared, ablated) -> None:
    """On exactly the common patients: per-fold differences, the corrected resampled t-test and
    the pooled difference (with a paired bootstrap CI around it)."""
    from scipy import stats

    keep = _common(prepared)
    rows = {r["model"]: r for r in ablated.summary.to_dicts()}
    ref = ablated.reference
    other = "image" if ref == "gene" else "gene"
    assert ref in ("gene", "image") and rows[ref]["pr_auc_pooled"] >= rows[other]["pr_auc_pooled"]
    base = _fold_pr_auc(ablated.runs[ref], keep)
    theirs = _fold_pr_auc(ablated.runs[other], keep)
    assert rows[other]["pr_auc_diff_mean"] == pytest.approx(np.mean([theirs[k] - base[k] for k in range(3)]))
    mine = _fold_pr_auc(ablated.runs["xattn"], keep)
    diffs = np.array([mine[k] - base[k] for k in range(3)])
    assert rows["xattn"]["pr_auc_diff_mean"] == pytest.approx(np.mean(diffs))
    assert rows["xattn"]["pr_auc_diff_sd"] == pytest.approx(np.std(diffs, ddof=1))
    assert rows["xattn"]["pr_auc_diff_wins"] == sum(d > 0 for d in diffs)
    t = diffs.mean() / np.sqrt((1 / 3 + 1 / 2) * diffs.var(ddof=1))  # Nadeau-Bengio: n_test/n_train = 1/2
    assert rows["xattn"]["pr_auc_diff_t"] == pytest.approx(t)
    assert rows["xattn"]["pr_auc_diff_p"] == pytest.approx(2 * stats.t.sf(abs(t), df=2))
    a, b = _oof(ablated.runs["xattn"], keep), _oof(ablated.runs[ref], keep)
    pooled = skm.average_precision_score(a["target"], a["prob"]) - skm.average_precision_score(b["target"],
                                                                                                b["prob"])
    r = rows["xattn"]
    assert r["pr_auc_diff_pooled"] == pytest.approx(pooled)
    assert r["pr_auc_diff_ci_low"] <= pooled <= r["pr_auc_diff_ci_high"]
    assert np.isnan(rows[ref]["pr_auc_diff_p"])


def test_sanity_permutation_lands_near_chance(ablated) -> None:
    rows = {r["kind"] if r["kind"] != "model" else r["model"]: r for r in ablated.summary.to_dicts()}
    perm, real = rows["permuted-labels"], rows["xattn"]
    # one draw of 48 patients: wide (labels permuted within each validation fold keep its class
    # counts, so no fold-imbalance bias); the null distribution below is the real test
    assert 0.2 < perm["roc_auc_pooled"] < 0.8 and abs(perm["mcc_pooled"]) < 0.4
    assert real["roc_auc_pooled"] > 0.8 and real["roc_auc_pooled"] > perm["roc_auc_pooled"] + 0.15
    marker = artifacts.read_json(ablated.runs["xattn (permuted labels)"] / "sanity.json")
    assert marker["kind"] == "permuted-labels"
    # the null: 3 re-fits on permuted labels, the real score's empirical p = 1 / (3 + 1) at best
    null = artifacts.read_parquet(prepared_null := ablated.out_dir / "null.parquet", schema="summary")
    assert null.height == 3 and prepared_null.is_file()
    assert (null["roc_auc"] < real["roc_auc_pooled"]).all() and null["roc_auc"].mean() < 0.75
    assert ablated.null["metrics"]["roc_auc"]["p"] == pytest.approx(0.25)
    assert real["roc_auc_perm_p"] == pytest.approx(0.25)
    # the p-value's real score is the run on its own 48 patients, labelled as such beside the
    # common-patient pooled value
    assert real["perm_n"] == 48
    assert real["roc_auc_perm_real"] == pytest.approx(ablated.null["metrics"]["roc_auc"]["real"])
    assert "own 48 patients" in (ablated.out_dir / "summary.md").read_text()
    assert set(null["scheme"].to_list()) == {"within-validation-folds"}
    # sanity rows: other labels or bags than the reference, so no paired difference or p
    for row in (perm, rows["shuffled-images"]):
        assert np.isnan(row["pr_auc_diff_pooled"]) and np.isnan(row["roc_auc_diff_p"]), row["model"]
    assert "no Δ or p" in (ablated.out_dir / "summary.md").read_text()


def test_a_failed_ablation_leaves_no_null_table_in_the_live_folder(prepared, monkeypatch) -> None:
    real_write = artifacts.write_text

    def failing(path, *a, **k):
        if str(path).endswith("summary.md"):
            raise OSError("disk full")
        return real_write(path, *a, **k)

    monkeypatch.setattr(artifacts, "write_text", failing)
    cfg = AblateConfig(fusions=["gene", "image"], sanity=True, permutations=1, name="fails",
                       **{**FAST, "epochs": 2, "bootstrap": 0, "plots": False})
    with pytest.raises(OSError, match="disk full"):
        run_ablate(prepared.workdir, cfg, progress=False)
    assert not (prepared.workdir.ablation_dir("fails") / "null.parquet").exists()


def test_shuffled_images_move_bags_only_within_folds_among_patients_with_images(prepared) -> None:
    from brcatool.cohort import load_cohort

    cohort = load_cohort(prepared.workdir)
    splits = load_splits(prepared.workdir.splits)
    shuffled = cohort.with_shuffled_images(11, groups=splits.fold.T)
    assert np.array_equal(shuffled.has_img, cohort.has_img)
    assert np.array_equal(shuffled.has_expr, cohort.has_expr)
    moved = 0
    for i in np.flatnonzero(cohort.has_img):
        j = [k for k in np.flatnonzero(cohort.has_img)
             if np.array_equal(cohort.features[k], shuffled.features[i])]
        assert len(j) == 1 and splits.fold[0, j[0]] == splits.fold[0, i]
        moved += j[0] != i
    assert moved > 20


def test_rerun_reuses_runs_and_other_params_refuse(prepared, ablated) -> None:
    cfg = AblateConfig(fusions=["gene", "image", "xattn"], sanity=True, permutations=3, name="t", **FAST)
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
        assert all(fold_of[p] == k for p, k in oof.select("patient_id", "fold").iter_rows()), label
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


def test_repeats_extend_the_saved_split_and_give_a_corrected_t_test(prepared) -> None:
    tiny = {**FAST, "epochs": 2, "bootstrap": 50, "plots": False, "repeats": 2}
    res = run_ablate(prepared.workdir, AblateConfig(fusions=["gene", "image"], name="rep", **tiny),
                     progress=False)
    rows = {r["model"]: r for r in res.summary.to_dicts()}
    assert rows["gene"]["folds"] == rows["image"]["folds"] == 6  # 3 folds x 2 repeats
    other = "image" if res.reference == "gene" else "gene"
    assert np.isfinite(rows[other]["pr_auc_diff_p"]) and 0 <= rows[other]["pr_auc_diff_p"] <= 1
    saved = load_splits(prepared.workdir.splits)
    assert saved.repeats == 2  # extended; the first repeat is the one the other ablations used
    oof = artifacts.read_parquet(res.runs["gene"] / "oof.parquet", schema="oof")
    assert sorted(oof["repeat"].unique().to_list()) == [0, 1]
    checked = 0
    for label, r in rows.items():  # pooled = mean over repeats, and its CI resamples that estimator
        for m in [k[: -len("_pooled")] for k in r if k.endswith("_pooled") and not k.endswith("diff_pooled")]:
            if np.isfinite(r[f"{m}_pooled"]):
                assert r[f"{m}_ci_low"] <= r[f"{m}_pooled"] <= r[f"{m}_ci_high"], (label, m)
                checked += 1
    assert checked >= len(rows)
