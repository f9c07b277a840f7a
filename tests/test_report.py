"""brcatool report: each section read back against the artifacts it shows, on real workdirs.

``mini_demo`` (conftest) is the whole demo pipeline at test size; ``tile_only`` is a workdir where
only ``tile`` ran (with a slide without tissue and two unreadable files); ``train_only`` a prepared
workdir with one trained, never evaluated run.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from brcatool import artifacts
from brcatool.artifacts import Workdir
from brcatool.cli.app import app
from brcatool.names import file_name
from brcatool.report import ReportConfig, run_report
from brcatool.report.collect import SECTIONS, collect
from brcatool.report.interpret import pick
from brcatool.report.provenance import outputs
from brcatool.synth import make_cohort, make_prepared_workdir
from brcatool.tiling import TileConfig, run_tile

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def demo_wd(mini_demo) -> Workdir:
    return Workdir(mini_demo.workdir)


@pytest.fixture(scope="module")
def demo_data(demo_wd: Workdir) -> dict:
    """What the page of the mini demo shows (collected once: it inlines every image)."""
    return collect(demo_wd)


@pytest.fixture(scope="module")
def tile_only(tmp_path_factory: pytest.TempPathFactory) -> Workdir:
    out = tmp_path_factory.mktemp("tile_only")
    files = make_cohort(out / "c", patients=3, seed=3, slide_size=(1280, 1024), genes=60, no_tissue_slides=1,
                        progress=False)
    bad = out / "bad"
    bad.mkdir()
    shutil.copy(DATA / "unopenable.tiff", bad / "unopenable.tiff")
    shutil.copy(DATA / "unreadable.svs", bad / "unreadable.svs")
    wd = Workdir(out / "work")
    inputs = [str(files.slides_dir), str(bad / "unopenable.tiff"), str(bad / "unreadable.svs")]
    run_tile(wd, TileConfig(slides=inputs, patches=4, seed=1, workers=1), progress=False)
    return wd


@pytest.fixture(scope="module")
def train_only(tmp_path_factory: pytest.TempPathFactory) -> Workdir:
    from brcatool.training import TrainConfig, run_train

    wd = make_prepared_workdir(tmp_path_factory.mktemp("train_only") / "w", patients=16, patches=3, dim=8,
                               genes=10, seed=2).workdir
    cfg = TrainConfig(fusion="concat", folds=2, epochs=2, patience=1, name="quick", threshold="tuned")
    run_train(wd, cfg, progress=False)
    return wd


def _decode(src: str) -> np.ndarray:
    head, b64 = src.split(",", 1)
    assert head.startswith("data:image/") and head.endswith(";base64")
    img = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.size
    return img


def _text(html: str) -> str:
    """The page's visible text, roughly (tags dropped, whitespace collapsed)."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


# --------------------------------------------------------------------------- a workdir at the first stage
def test_only_tile_ran(tile_only: Workdir, tmp_path: Path) -> None:
    res = run_report(tile_only, ReportConfig(out=str(tmp_path / "r.html")))
    assert res.path == tmp_path / "r.html" and res.path.is_file()
    assert res.sections == {"cohort": False, "slides": True, "runs": False, "ablation": False,
                            "interpretability": False, "provenance": True}
    html = res.path.read_text()
    assert html.count("Not run yet.") == 4
    assert f"brcatool prep-expr --expression EXPR.tsv --clinical CLINICAL.tsv -w {tile_only.root}" in html
    slides = artifacts.read_parquet(tile_only.slides_table, schema="slides")
    assert set(slides["status"]) == {"ok", "no_tissue", "failed"}
    data = collect(tile_only)["slides"]
    assert [c["slide_id"] for c in data["cards"]] == slides["slide_id"].to_list()
    statuses = ("ok", "no_tissue", "failed")
    assert data["status_counts"] == {s: int((slides["status"] == s).sum()) for s in statuses}
    assert data["n_patches"] == slides["n_patches"].sum()
    for card, row in zip(data["cards"], slides.iter_rows(named=True), strict=True):
        has_qc = tile_only.qc_image(row["slide_id"]).is_file()
        assert (card["thumb"] is not None) == has_qc  # failed slides have no QC image, and no broken <img>
        assert card["n_patches"] == row["n_patches"]
        if row["status"] == "failed":
            assert row["error"] and row["error"] in html
    assert res.images == sum(c["thumb"] is not None for c in data["cards"])
    # the provenance names tile's manifest and the command that repeats it
    yaml_path = tile_only.stage_manifest("tile").with_suffix(".yaml")
    assert f"brcatool tile -w {tile_only.root} --config {yaml_path}" in html


def test_thumbnails_are_shrunk_jpegs_that_decode(tile_only: Workdir) -> None:
    cards = collect(tile_only, thumb_side=200)["slides"]["cards"]
    thumbs = [c["thumb"] for c in cards if c["thumb"] is not None]
    assert thumbs
    for t in thumbs:
        assert t.src.startswith("data:image/jpeg;base64,")
        img = _decode(t.src)
        assert max(img.shape[:2]) == 200 and (img.shape[1], img.shape[0]) == (t.width, t.height)


def test_page_is_self_contained(demo_wd: Workdir, mini_demo) -> None:
    html = mini_demo.results["report"].path.read_text()
    srcs = re.findall(r'\ssrc="([^"]*)"', html)
    hrefs = re.findall(r'\shref="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/") for s in srcs)
    assert hrefs and all(h.startswith("#") for h in hrefs)
    assert "<link" not in html and "@import" not in html and "url(" not in html
    assert not re.search(r"<script[^>]*\ssrc=", html)
    for src in srcs:
        _decode(src)


# --------------------------------------------------------------------------- sections of a finished study
def test_demo_writes_the_report(mini_demo) -> None:
    res = mini_demo.results["report"]
    assert res.path == mini_demo.workdir / "report.html" and res.path.is_file()
    assert all(res.sections.values()) and not res.notes
    html = res.path.read_text()
    for sid, title in SECTIONS:
        assert f'<section id="{sid}"' in html and f">{title}</h2>" in html


def test_cohort_section(demo_wd: Workdir, demo_data: dict) -> None:
    data = demo_data["cohort"]
    man = artifacts.read_json(demo_wd.stage_manifest("prep-expr"))
    cohort = artifacts.read_parquet(demo_wd.cohort_table, schema="cohort")
    labels = artifacts.read_parquet(demo_wd.labels_table, schema="labels")
    assert {a["what"]: a["n"] for a in data["alignment"]} == man["alignment"]
    included = cohort.filter(pl.col("included"))["patient_id"]
    expect = labels.filter(pl.col("patient_id").is_in(included.to_list()))["label"].value_counts()
    assert {b["label"]: b["n"] for b in data["balance"]} == dict(expect.iter_rows())
    assert [b["label"] for b in data["balance"]] == man["classes"]
    assert data["n_included"] == included.len()
    no_label = cohort.filter(~pl.col("has_label"))
    dropped = {d["what"]: d for d in data["dropped"]}
    if no_label.height:
        assert dropped["patients without a label"]["n"] == no_label.height
        drops = [w for w in man["warnings"] if " drops " in w]
        assert all(w.split(": ", 1)[1] in dropped["patients without a label"]["why"] for w in drops)
    else:
        assert "patients without a label" not in dropped


def test_runs_section(demo_wd: Workdir, demo_data: dict) -> None:
    data = demo_data["runs"]
    finished = sorted(p.name for p in demo_wd.runs_dir.iterdir() if (p / "manifest.json").is_file())
    assert sorted(r["name"] for r in data["runs"]) == finished
    for run in data["runs"]:
        rd = demo_wd.run_dir(run["name"])
        ev = artifacts.read_json(rd / "eval" / "metrics.json")
        assert run["evaluated"] and run["bootstrap"] == ev["bootstrap"] == 50
        rows = {r["metric"]: r for r in run["metrics"]}
        assert np.isfinite(ev["pooled"]["roc_auc"])  # the loop below compares at least this one
        for m, v in ev["pooled"].items():
            if v is not None and np.isfinite(v):
                assert rows[m]["pooled"] == pytest.approx(v)
                lo, hi = ev["ci95"][m]
                assert (rows[m]["lo"], rows[m]["hi"]) == (pytest.approx(lo), pytest.approx(hi))
        train = artifacts.read_json(rd / "metrics.json")
        assert len(run["folds"]["rows"]) == len(train["per_fold"]) == 3
        keys = [c["key"] for c in run["folds"]["columns"]]
        assert {"fold", "n", "threshold", "best_epoch", "mcc"} <= set(keys)
        oof = artifacts.read_parquet(rd / "oof.parquet", schema="oof")
        assert run["patients"]["ids"] == sorted(oof["patient_id"].unique().to_list())
        assert sum(c["n"] for c in run["patients"]["by_class"]) == run["patients"]["n"]
        pngs = sorted(p.name for p in (rd / "eval" / "plots").glob("*.png"))
        assert sorted(Path(p["path"]).name for p in run["plots"]) == pngs
        assert all(p["image"] is not None for p in run["plots"])
        assert run["threshold"]["setting"] == "0.5"
        assert (run["sanity"] is not None) == (rd / "sanity.json").is_file()


def test_runs_restricted_and_train_only(train_only: Workdir, tmp_path: Path) -> None:
    res = run_report(train_only, ReportConfig(out=str(tmp_path / "r.html"), runs=["quick"]))
    data = collect(train_only, runs=["quick"])["runs"]
    (run,) = data["runs"]
    assert not run["evaluated"] and run["plots"] == [] and run["threshold"]["setting"] == "tuned"
    train = artifacts.read_json(train_only.run_dir("quick") / "metrics.json")
    assert {r["metric"]: r["mean"] for r in run["metrics"]} == pytest.approx(train["fold_mean"])
    assert all(r["lo"] is None for r in run["metrics"])
    thresholds = [f["threshold"] for f in train["per_fold"]]
    assert (run["threshold"]["min"], run["threshold"]["max"]) == (min(thresholds), max(thresholds))
    html = res.path.read_text()
    assert "brcatool evaluate --run quick" in html and "train only" in html
    assert not res.sections["interpretability"] and not res.sections["ablation"]
    # make_prepared_workdir writes slides.parquet but no QC images: cards without thumbnails
    assert res.sections["slides"] and "QC image missing or unreadable" in html


def test_ablation_section(demo_wd: Workdir, demo_data: dict) -> None:
    (abl,) = demo_data["ablation"]["ablations"]
    summary = artifacts.read_parquet(demo_wd.ablation_dir("demo") / "summary.parquet", schema="summary")
    assert abl["name"] == "demo" and abl["models"] == summary["model"].to_list()
    assert abl["all_columns"] == summary.columns
    assert [r["sanity"] for r in abl["rows"]] == [k != "model" for k in summary["kind"]]
    assert any(r["sanity"] for r in abl["rows"])
    ref = summary["reference"][0]
    assert abl["reference"] == ref and ref in abl["models"]
    first = summary.row(0, named=True)
    cell = abl["rows"][0]["cells"][0]
    assert abl["metrics"][0]["key"] == "f1"
    assert (cell["mean"], cell["sd"], cell["lo"]) == pytest.approx(
        (first["f1_mean"], first["f1_sd"], first["f1_ci_low"]), nan_ok=True)
    assert abl["images"] and Path(abl["images"][0]["path"]).name == "metrics.png"


def test_ablation_reads_columns_by_name(demo_wd: Workdir, tmp_path: Path) -> None:
    """A newer table (extra columns, one gone) still renders, showing every column it has."""
    wd = Workdir(tmp_path / "w")
    shutil.copytree(demo_wd.ablation_dir("demo"), wd.ablation_dir("demo"))
    path = wd.ablation_dir("demo") / "summary.parquet"
    summary = pl.read_parquet(path)
    summary = summary.drop("kind", "f1_diff_wins").with_columns(
        pl.lit(0.04).alias("f1_diff_p_value"), pl.lit("holm").alias("correction"))
    artifacts.write_parquet(summary, path, schema="summary")
    res = run_report(wd, ReportConfig())
    html = res.path.read_text()
    (abl,) = collect(wd)["ablation"]["ablations"]
    assert abl["all_columns"] == summary.columns and not any(r["sanity"] for r in abl["rows"])
    row = abl["rows"][1]  # not the reference
    assert ("p value", 0.04) in row["diffs"][0]["extra"] and ("correction", "holm") in row["also"]
    assert all(k != "wins" for k, _ in row["diffs"][0]["extra"])  # f1_diff_wins was dropped
    for col in ("f1_diff_p_value", "correction"):
        assert f">{col}</th>" in html
    assert res.sections["ablation"] and not res.sections["runs"]


def test_interpretability_section(demo_wd: Workdir, demo_data: dict) -> None:
    data = demo_data["interpretability"]
    (run,) = data["runs"]  # only the demo's own evaluation asks for montages and heatmaps
    out = demo_wd.run_dir(run["name"]) / "eval"
    assert run["available"] == len({p.stem for p in (out / "topk").glob("*.png")})
    assert len(run["patients"]) == min(6, run["available"]) and run["available"] > 2
    oof = artifacts.read_parquet(demo_wd.run_dir(run["name"]) / "oof.parquet", schema="oof")
    truth = dict(oof.select("patient_id", "target").iter_rows())
    labels = {run["classes"][truth[p["patient_id"]]] for p in run["patients"]}
    assert labels == set(run["classes"])  # round robin over the true classes
    slides = artifacts.read_parquet(demo_wd.slides_table, schema="slides")
    for p in run["patients"]:
        assert p["topk"] is not None and p["label"] == run["classes"][truth[p["patient_id"]]]
        mine = set(slides.filter(pl.col("patient_id") == p["patient_id"])["slide_id"])
        shown = {h["slide_id"] for h in p["heatmaps"]}
        assert shown and shown <= mine
        assert shown == {s for s in mine if (out / "heatmaps" / f"{file_name(s)}.png").is_file()}
    from brcatool.report.interpret import interpret_section
    from brcatool.report.read import Notes

    none = interpret_section(demo_wd, Notes(), [demo_wd.run_dir(run["name"])], 0)
    assert none["runs"][0]["patients"] == []


def test_pick_alternates_classes_then_hits_and_errors() -> None:
    preds = {"a": {"label": "X", "correct": True, "confidence": 0.9},
             "b": {"label": "X", "correct": False, "confidence": 0.8},
             "c": {"label": "X", "correct": True, "confidence": 0.6},
             "d": {"label": "Y", "correct": True, "confidence": 0.7},
             "e": {"label": "Y", "correct": True, "confidence": 0.95}}
    assert pick(list(preds), preds, 5) == ["a", "e", "b", "d", "c"]
    assert pick(list(preds), preds, 2) == ["a", "e"]
    assert pick(["z"], {}, 3) == ["z"]


def test_provenance_section(demo_wd: Workdir, demo_data: dict) -> None:
    data = demo_data["provenance"]
    found = outputs(demo_wd, sorted(p for p in demo_wd.runs_dir.iterdir() if (p / "manifest.json").is_file()))
    assert len(data["stages"]) == len(found)
    commands = [s["command"] for s in data["stages"]]
    runs = sum(1 for p in demo_wd.runs_dir.iterdir() if (p / "manifest.json").is_file())
    assert commands.count("train") == runs and commands.count("evaluate") == runs
    assert {"tile", "embed", "prep-expr", "ablate"} <= set(commands)
    for s in data["stages"]:
        man = artifacts.read_json(Path(s["manifest"]))
        assert json.loads(s["params"]) == man["params"]
        assert s["repeat"] == f"brcatool {s['command']} -w {demo_wd.root} --config {s['yaml_path']}"
        assert Path(s["yaml_path"]).is_file() and s["yaml"] == Path(s["yaml_path"]).read_text()
        assert s["versions"] == man["versions"]


def test_unreadable_files_become_notes(demo_wd: Workdir, tmp_path: Path) -> None:
    wd = Workdir(tmp_path / "w")
    shutil.copytree(demo_wd.root, wd.root, ignore=shutil.ignore_patterns("cohort", "patches.zarr", "*.pt"))
    run, other = sorted(p for p in wd.runs_dir.iterdir() if (p / "eval" / "plots").is_dir())[:2]
    # an external evaluation is shown under its run (here: evaluate's files, as `--on` lays them out)
    ext = other / "external" / "cohort-b"
    shutil.copytree(other / "eval", ext)
    ev = artifacts.read_json(ext / "metrics.json")
    artifacts.write_json(ext / "metrics.json", {**ev, "scope": "external:cohort-b", "n_patients": 7})
    (run / "eval" / "metrics.json").write_text("{not json")
    # manifests and sanity records missing their usual keys still render (as far as they go)
    artifacts.write_json(other / "eval" / "manifest.json", {"stage": "evaluate", "inputs": [{"size": 3}]})
    artifacts.write_json(run / "sanity.json", {"seed": 1})
    sid = artifacts.read_parquet(wd.slides_table, schema="slides")["slide_id"][0]
    wd.qc_image(sid).write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    res = run_report(wd, ReportConfig())
    assert any(str(run / "eval" / "metrics.json") in n for n in res.notes)
    html = res.path.read_text()
    assert "Some files could not be read" in html
    data = collect(wd)
    assert next(c for c in data["slides"]["cards"] if c["slide_id"] == sid)["thumb"] is None
    (shown,) = next(r for r in data["runs"]["runs"] if r["name"] == other.name)["external"]
    assert shown["name"] == "cohort-b" and shown["n_patients"] == 7
    assert [m["pooled"] for m in shown["metrics"]] == [m["pooled"] for m in
                                                        next(r for r in data["runs"]["runs"]
                                                             if r["name"] == other.name)["metrics"]]
    assert "External cohort cohort-b (7 patients" in html
    assert any(s["what"] == f"runs/{other.name}/external/cohort-b" for s in data["provenance"]["stages"])
    bare = next(s for s in data["provenance"]["stages"] if s["what"] == f"runs/{other.name}/eval")
    assert bare["versions"] == {} and bare["brcatool"] is None and bare["inputs"][0]["path"] == "?"
    assert next(r for r in data["runs"]["runs"] if r["name"] == run.name)["sanity"]["kind"] == "sanity check"
    for src in re.findall(r'\ssrc="([^"]*)"', html):
        _decode(src)


# --------------------------------------------------------------------------- CLI
def test_cli(demo_wd: Workdir, tmp_path: Path) -> None:
    runner = CliRunner()
    names = sorted(p.name for p in demo_wd.runs_dir.iterdir() if (p / "manifest.json").is_file())[:2]
    out = tmp_path / "page.html"
    res = runner.invoke(app, ["report", "-w", str(demo_wd.root), "--out", str(out), "--runs", ",".join(names),
                              "--patients", "2"])
    assert res.exit_code == 0, res.output
    assert str(out) in res.output and out.is_file()
    html = out.read_text()
    shown = set(re.findall(r'<details class="run" id="run-\d+"[^>]*>\s*<summary><h3>([^<]+)</h3>', html))
    assert shown == set(names)
    bad = runner.invoke(app, ["report", "-w", str(demo_wd.root), "--out", str(out), "--runs", "nope"])
    assert bad.exit_code == 1 and "no finished run named 'nope'" in bad.output
    assert "Traceback" not in bad.output
    missing = runner.invoke(app, ["report", "-w", str(tmp_path / "absent")])
    assert missing.exit_code == 1 and "workdir not found" in missing.output


def test_dropped_reads_nested_and_flat_prep_expr_counts(tmp_path: Path) -> None:
    """prep-expr's structured ``counts["dropped"]`` (leaves > 0 that leave something out) or the older flat
    ``*_dropped_*`` counts; statistics that drop nothing (rows read, a policy name) are not rows."""
    from brcatool.report.read import Notes
    from brcatool.report.study import _dropped

    wd = Workdir(tmp_path)
    nested = {"dropped": {"sample_columns": {"not_primary": 3, "types": {"06": 2, "11": 1},
                                             "second_sample_of_a_patient": 0},
                          "label_rows": {"rows": 60, "dropped_by_task": {"Normal": 5, "Other": 0},
                                         "blank": 2},
                          "duplicate_genes": {"policy": "first", "genes": 4}}}
    rows = {r["what"]: r for r in _dropped(wd, {"counts": nested}, None, Notes())}
    assert {k: r["n"] for k, r in rows.items()} == {
        "non-primary samples": 3, "labels the task drops: Normal": 5, "blank labels": 2}
    assert "'06': 2" in rows["non-primary samples"]["why"]
    flat = {"samples_dropped_not_primary": 2, "genes_dropped_zero": 0, "samples_read": 9}
    rows = _dropped(wd, {"counts": flat}, None, Notes())
    assert [(r["what"], r["n"]) for r in rows] == [("samples dropped not primary", 2)]


def test_figures_of_ids_that_are_not_file_names(demo_wd: Workdir, tmp_path: Path) -> None:
    """evaluate names a montage by ``names.file_name`` of the patient id; the report maps it back."""
    run = next(p for p in sorted(demo_wd.runs_dir.iterdir()) if (p / "eval" / "topk").is_dir())
    wd = Workdir(tmp_path / "w")
    shutil.copytree(run, wd.run_dir(run.name), ignore=shutil.ignore_patterns("*.pt", "heatmaps"))
    topk = wd.run_dir(run.name) / "eval" / "topk"
    pid = sorted(p.stem for p in topk.glob("*.png"))[0]
    odd = f"{pid} / site 2"
    assert file_name(odd) != odd
    (topk / f"{pid}.png").rename(topk / f"{file_name(odd)}.png")
    oof_path = wd.run_dir(run.name) / "oof.parquet"
    oof = artifacts.read_parquet(oof_path, schema="oof")
    oof = oof.with_columns(pl.when(pl.col("patient_id") == pid).then(pl.lit(odd))
                           .otherwise(pl.col("patient_id")).alias("patient_id"))
    artifacts.write_parquet(oof, oof_path, schema="oof")
    (shown,) = collect(wd, patients=1000)["interpretability"]["runs"]
    mine = next(p for p in shown["patients"] if p["patient_id"] == odd)
    assert mine["topk"] is not None and mine["label"] in shown["classes"]
    assert pid not in {p["patient_id"] for p in shown["patients"]}
