"""import-features: foreign files -> a feature store + patch tables that prep-expr and train use unchanged."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from brcatool import artifacts, stores
from brcatool.artifacts import Workdir
from brcatool.cli.app import app
from brcatool.errors import ArtifactError, InputError
from brcatool.interop.importer import ImportConfig, run_import_features
from brcatool.synth.foreign import make_foreign_features

runner = CliRunner()


def _import(wd, fs, layout, **kw):
    cfg = ImportConfig(source=str(fs.source), format=layout, encoder="ext", mpp=kw.pop("mpp", fs.mpp),
                       coords=str(fs.coords_dir) if fs.coords_dir else None, **kw)
    return run_import_features(wd, cfg, progress=False)


@pytest.mark.parametrize("layout", ["clam", "trident", "stamp", "pt"])
def test_store_and_tables_equal_the_source(tmp_path, layout):
    fs = make_foreign_features(tmp_path / "src", layout, patients=3, patches=5, dim=8)
    wd = Workdir(tmp_path / "wd")
    res = _import(wd, fs, layout)
    assert res.count("ok") == 3 and res.dim == 8 and res.n_patches == 15
    patches = artifacts.read_parquet(wd.patches_table, schema="patches")
    slides_t = artifacts.read_parquet(wd.slides_table, schema="slides")
    for sid, feats in fs.features.items():
        store = stores.read_features(wd, "ext", sid)
        assert store.shape == (1, 5, 8)
        np.testing.assert_array_equal(store[0], feats)  # the sources are float16-exact
        rows = patches.filter(patches["slide_id"] == sid).sort("patch_index")
        np.testing.assert_array_equal(rows.select("x", "y").to_numpy(), fs.coords[sid])
        size0 = rows["size"].to_numpy() * rows["mpp"].to_numpy() / fs.mpp  # as evaluate's heatmaps read it
        np.testing.assert_allclose(size0, fs.size0)
        assert set(rows["patient_id"]) == {fs.patients[sid]}  # TCGA barcode -> patient
    assert set(slides_t["status"]) == {"ok"} and slides_t["mpp"].to_list() == [fs.mpp] * 3
    man = artifacts.read_json(wd.features_dir("ext") / "manifest.json")
    assert man["status"] == "complete" and man["params"]["dim"] == 8
    assert man["params"]["weights"].startswith(f"imported:{layout}")


def test_bad_files_are_failed_rows_and_the_rest_goes_on(tmp_path):
    fs = make_foreign_features(tmp_path / "src", "trident", patients=5, patches=4, dim=8)
    files = sorted(p for p in fs.source.rglob("*.h5"))
    with h5py.File(files[0], "a") as f:  # length mismatch
        attrs = dict(f["coords"].attrs)
        del f["coords"]
        f["coords"] = np.zeros((3, 2), np.int64)
        f["coords"].attrs.update(attrs)
    with h5py.File(files[1], "a") as f:  # another dimension
        del f["features"]
        f["features"] = np.ones((4, 6), np.float32)
    with h5py.File(files[2], "a") as f:  # NaN
        f["features"][0, 0] = np.nan
    wd = Workdir(tmp_path / "wd")
    res = _import(wd, fs, "trident")
    errors = {r["slide_id"]: r["error"] for r in res.rows if r["status"] == "failed"}
    assert len(errors) == 3 and res.count("ok") == 2
    texts = sorted(errors.values())
    assert any("4 feature rows but 3 coordinates" in t for t in texts)
    assert any("feature dim 6 differs from the other slides' 8" in t for t in texts)
    assert any("1 NaN/inf feature values" in t for t in texts)
    assert all("\n" not in t for t in texts)
    slides_t = artifacts.read_parquet(wd.slides_table, schema="slides")
    assert sorted(slides_t["status"].to_list()) == ["failed"] * 3 + ["ok"] * 2
    assert sorted(stores.feature_slides(wd, "ext")) == sorted(
        r["slide_id"] for r in res.rows if r["status"] == "ok")


def test_mpp_missing_is_a_failed_row_and_a_slides_table_supplies_it(tmp_path):
    fs = make_foreign_features(tmp_path / "src", "clam", patients=2, patches=3, dim=4)
    with pytest.raises(InputError, match="no usable feature file.*µm/px"):
        _import(Workdir(tmp_path / "a"), fs, "clam", mpp=None)
    table = tmp_path / "slides.csv"
    sids = sorted(fs.features)
    table.write_text("slide_id,patient_id,mpp\n" + "".join(f"{s},P{i},0.25\n" for i, s in enumerate(sids)))
    res = _import(Workdir(tmp_path / "b"), fs, "clam", mpp=None, slides_table=str(table))
    assert res.count("ok") == 2 and sorted(r["patient_id"] for r in res.rows) == ["P0", "P1"]


def test_a_tiled_workdir_or_other_features_are_refused(tmp_path):
    fs = make_foreign_features(tmp_path / "src", "trident", patients=2, patches=3, dim=4)
    wd = Workdir(tmp_path / "wd")
    _import(wd, fs, "trident")
    _import(wd, fs, "trident")  # same command again: fine
    with pytest.raises(ArtifactError, match="made otherwise"):
        _import(wd, fs, "trident", patch_size=100)
    artifacts.write_json(wd.stage_manifest("tile"), {"stage": "tile"})
    with pytest.raises(ArtifactError, match="tiled from slides"):
        _import(Workdir(wd.root), fs, "trident", patch_size=100)
    assert _import(wd, fs, "trident", patch_size=100, overwrite=True).count("ok") == 2
    assert not wd.stage_manifest("tile").exists()


@pytest.mark.parametrize("layout", ["clam", "trident", "stamp", "pt"])
def test_import_then_prep_expr_then_train_run_unchanged(tmp_path, layout):
    fs = make_foreign_features(tmp_path / "src", layout, patients=16, patches=6, dim=8, signal=2.0,
                               expression=True, genes=80)
    wd = str(tmp_path / "wd")
    extra = ["--coords", str(fs.coords_dir)] if fs.coords_dir else []
    extra += [] if layout == "trident" else ["--mpp", str(fs.mpp)]
    out = runner.invoke(app, ["import-features", str(fs.source), "--format", layout, "--encoder", "uni_v1",
                              "-w", wd, "-q", *extra])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["prep-expr", "--expression", str(fs.expression), "--clinical", str(fs.clinical),
                              "-w", wd, "-q"])
    assert out.exit_code == 0, out.output
    cohort = artifacts.read_parquet(Workdir(wd).cohort_table, schema="cohort")
    assert cohort["has_slides"].all()  # the imported slides.parquet feeds the alignment
    out = runner.invoke(app, ["train", "-w", wd, "--fusion", "image", "--aggregator", "mean", "--encoder",
                              "uni_v1", "--epochs", "3", "--folds", "2", "--device", "cpu", "--name", "imp",
                              "-q"])
    assert out.exit_code == 0, out.output
    oof = artifacts.read_parquet(Workdir(wd).run_dir("imp") / "oof.parquet", schema="oof")
    labels = artifacts.read_parquet(Workdir(wd).labels_table, schema="labels")
    assert set(oof["patient_id"]) == set(labels["patient_id"]) and labels.height >= 12


def test_cli_reports_a_bad_folder_in_one_line(tmp_path):
    out = runner.invoke(app, ["import-features", str(tmp_path), "--format", "clam", "--encoder", "x",
                              "-w", str(tmp_path / "wd")])
    assert out.exit_code == 1
    assert "holds no .h5 feature files" in out.output and "Traceback" not in out.output


def test_a_refused_import_leaves_the_workdir_as_it_was(tmp_path):
    first = make_foreign_features(tmp_path / "a", "trident", patients=2, patches=3, dim=4, seed=1)
    other = make_foreign_features(tmp_path / "b", "trident", patients=2, patches=3, dim=4, seed=2)
    wd = Workdir(tmp_path / "wd")
    _import(wd, first, "trident")
    before = wd.patches_table.read_bytes()
    with pytest.raises(ArtifactError, match="holds other patches"):
        run_import_features(wd, ImportConfig(source=str(other.source), format="trident", encoder="second"),
                            progress=False)
    assert not wd.features_dir("second").exists() and wd.patches_table.read_bytes() == before
    assert wd.available_encoders() == ["ext"]
    # the same coordinates under a second encoder name share the patch table
    assert run_import_features(wd, ImportConfig(source=str(first.source), format="trident", encoder="second"),
                               progress=False).count("ok") == 2
    assert wd.available_encoders() == ["ext", "second"]


def test_slides_table_by_slide_file_path(tmp_path):
    from brcatool.interop.importer import read_slides_table

    table = tmp_path / "slides.tsv"
    table.write_text("path\tpatient_id\tmpp\nwsi/TCGA-AA-0001-01Z-00-DX1.svs\tP1\t0.5\n/abs/s2.ome.tiff\tP2\t\n")
    rows = read_slides_table(table)
    slide_file = str((tmp_path / "wsi" / "TCGA-AA-0001-01Z-00-DX1.svs").resolve())
    assert rows["TCGA-AA-0001-01Z-00-DX1"] == {"patient_id": "P1", "mpp": 0.5, "path": slide_file}
    assert rows["s2"] == {"patient_id": "P2", "mpp": None, "path": "/abs/s2.ome.tiff"}
    table.write_text("path\tmpp\nx.svs\tfast\n")
    with pytest.raises(InputError, match="row 1: mpp 'fast' is not a number"):
        read_slides_table(table)


def test_mpp_source_prefers_given_values_and_a_magnification_guess_is_warned_once(tmp_path):
    from brcatool.synth.slides import SlideSpec, write_slide

    fs = make_foreign_features(tmp_path / "src", "trident", patients=3, patches=3, dim=4)
    guessed = _import(Workdir(tmp_path / "a"), fs, "trident", mpp=None)
    wd = Workdir(tmp_path / "a")
    slides_t = artifacts.read_parquet(wd.slides_table, schema="slides")
    assert slides_t["mpp_source"].to_list() == ["magnification"] * 3
    assert slides_t["mpp"].to_list() == [0.25] * 3
    assert len(guessed.warnings) == 1 and guessed.warnings[0].startswith("3 slide(s): µm/px guessed")
    man = artifacts.read_json(wd.features_dir("ext") / "manifest.json")
    assert man["counts"]["mpp_source"] == {"magnification": 3}
    assert man["params"]["extractor"] == "uni_v1" and man["params"]["weights"] == "imported:trident:uni_v1"
    # slides table: an mpp for one slide, a real slide file (0.2634 µm/px) for another, none for the third
    sids = sorted(fs.features)
    (tmp_path / "wsi").mkdir()
    write_slide(tmp_path / "wsi" / "s.tiff", SlideSpec(width=600, height=400, subtype="LumA", seed=(1,),
                                                         mpp=0.2634))
    table = tmp_path / "slides.csv"
    table.write_text(f"slide_id,path,mpp\n{sids[0]},,0.26\n{sids[1]},wsi/s.tiff,\n{sids[2]},,\n")
    res = _import(Workdir(tmp_path / "b"), fs, "trident", mpp=None, slides_table=str(table))
    rows = {r["slide_id"]: r for r in res.rows}
    assert [(rows[s]["mpp_source"], rows[s]["mpp"]) for s in sids] == [
        ("slides_table", 0.26), ("slide", pytest.approx(0.2634)), ("magnification", 0.25)]
    assert (rows[sids[1]]["width"], rows[sids[1]]["height"]) == (600, 400)
    assert res.warnings[0].startswith("1 slide(s)")
    given = _import(Workdir(tmp_path / "c"), fs, "trident", mpp=0.24)
    assert {r["mpp_source"] for r in given.rows} == {"mpp_option"} and not given.warnings


def test_stamp_file_without_a_tile_size_is_a_failed_row(tmp_path):
    fs = make_foreign_features(tmp_path / "src", "stamp", patients=3, patches=3, dim=4)
    first = sorted(fs.source.rglob("*.h5"))[0]
    with h5py.File(first, "a") as f:
        del f.attrs["tile_size_um"]
    res = _import(Workdir(tmp_path / "wd"), fs, "stamp")
    (bad,) = [r for r in res.rows if r["status"] == "failed"]
    assert "unit 'um' but no tile_size_um" in bad["error"] and "\n" not in bad["error"]
    assert res.count("ok") == 2
