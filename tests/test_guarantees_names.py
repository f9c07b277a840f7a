"""Class 1 of issue 18: every id or name that reaches the file system stays inside the workdir,
never collides with another id or an internal file, and the id itself is kept in the tables."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from brcatool import names, stores
from brcatool.artifacts import Manifest, Workdir
from brcatool.errors import InputError
from brcatool.synth.hostile import hostile_names

NAMES = hostile_names(400, seed=18)


def _inside(path: Path, folder: Path) -> bool:
    return os.path.realpath(path).startswith(os.path.realpath(folder) + os.sep)


def test_file_name_is_one_safe_component_for_every_name() -> None:
    for name in NAMES:
        f = names.file_name(name)
        assert f == names.file_name(name)  # deterministic
        assert f not in ("", ".", "..") and not f.startswith((".", "-")), (name, f)
        assert f.isascii() and not set(f) & set('/\\\x00:*?"<>|\n\t ') and not f.endswith("."), (name, f)
        assert len(f.encode()) <= 100, (name, f)
        assert f.split(".")[0].lower() not in names.WINDOWS_RESERVED, (name, f)
        assert f.lower() not in names.INTERNAL, (name, f)
        assert (f == name) == names.is_plain(name)  # plain ids stay readable


def test_file_name_is_injective_and_case_safe_for_mapped_names() -> None:
    mapped = {}
    for name in NAMES:
        f = names.file_name(name)
        assert mapped.setdefault(f, name) == name, f"{name!r} and {mapped[f]!r} both map to {f!r}"
    folded = {}
    for name in NAMES:
        f = names.file_name(name)
        if "~" in f:  # mapped names carry a hash of the exact id: distinct even case-folded
            assert folded.setdefault(f.casefold(), name) == name


def test_workdir_paths_stay_inside_for_every_id(tmp_path: Path) -> None:
    wd = Workdir(tmp_path / "wd")
    for name in NAMES:
        for path, folder in ((wd.features_dir(name), wd.root / "features"), (wd.qc_image(name), wd.qc_dir)):
            assert path.parent == folder and _inside(path, wd.root), (name, path)
        for make, folder in ((wd.run_dir, wd.runs_dir), (wd.ablation_dir, wd.ablations_dir)):
            try:
                path = make(name)
            except InputError as exc:  # refused names: one line saying which characters are allowed
                assert "\n" not in exc.one_line() and "fix:" in exc.one_line()
                continue
            assert names.is_plain(name) and path.parent == folder and _inside(path, folder), (name, path)


def test_stores_keep_every_id_inside_one_store_and_round_trip(tmp_path: Path) -> None:
    wd = Workdir(tmp_path / "wd")
    ids = NAMES[::3]
    for i, sid in enumerate(ids):
        stores.write_patches(wd, sid, np.full((1, 8, 8, 3), i % 251, np.uint8))
        stores.write_features(wd, "hf-hub:org/model", sid, np.full((1, 2, 3), i, np.float32))
    assert sorted(stores.patch_slides(wd)) == sorted(ids)
    assert sorted(stores.feature_slides(wd, "hf-hub:org/model")) == sorted(ids)
    for i, sid in enumerate(ids):
        assert stores.read_patches(wd, sid)[0, 0, 0, 0] == i % 251
        assert stores.read_features(wd, "hf-hub:org/model", sid)[0, 0, 0] == i
    # nothing escaped the workdir, and the stores' own metadata is intact
    outside = [p for p in tmp_path.rglob("*") if not _inside(p, wd.root) and p != wd.root]
    assert outside == []
    assert (wd.patches_zarr / "zarr.json").is_file()
    enc = "hf-hub:org/model"
    Manifest("embed", {"encoder": enc}).write(wd.features_dir(enc) / "manifest.json")
    assert wd.available_encoders() == ["hf-hub:org/model"]  # the name, not the folder's


def test_check_name_refuses_traversal_and_keeps_plain_names() -> None:
    for bad in ("..", ".", "../../precious", "a/b", "/abs", "", "x\x00", "CON", "manifest", ".tmp-x"):
        with pytest.raises(InputError, match="cannot be used as a folder name"):
            names.check_name(bad, what="run name")
    for good in ("xattn-abmil-20260101-120000", "demo_xattn", "run.v2", "_private"):
        assert names.check_name(good, what="run name") == good


def test_ids_differing_only_in_case_are_refused() -> None:
    names.check_distinct(["TCGA-A1-0001", "TCGA-A1-0002", "é", "e\u0301"], what="slide id")
    with pytest.raises(InputError, match="differ only in letter case"):
        names.check_distinct(["TCGA-A1-0001", "tcga-a1-0001"], what="slide id")


def test_train_name_outside_the_workdir_is_refused_and_deletes_nothing(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from brcatool.cli.app import app
    from brcatool.synth import make_prepared_workdir

    prepared = make_prepared_workdir(tmp_path / "wd", patients=12, patches=2, dim=4, genes=8)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    (prepared.workdir.runs_dir / "other").mkdir(parents=True)
    for name in ("../../precious", "../precious", ".", "..", "/tmp", "runs/../.."):
        res = CliRunner().invoke(app, ["train", "-w", str(prepared.workdir.root), "--name", name,
                                       "--overwrite", "--fusion", "gene", "--epochs", "1", "-q"])
        assert res.exit_code == 1, (name, res.output)
        assert "Traceback" not in res.output and "cannot be used as a folder name" in res.output
    assert (precious / "keep.txt").read_text() == "mine"
    assert (prepared.workdir.runs_dir / "other").is_dir()


def _slides_named(tmp_path: Path, slide: Path, stems: list[str]) -> Path:
    folder = tmp_path / "slides"
    folder.mkdir()
    for stem in stems:
        shutil.copy(slide, folder / f"{stem}.tiff")
    return folder


def test_tile_slides_with_hostile_file_names(tmp_path: Path, small_cohort) -> None:
    """`..tiff`, `params.tiff`, `zarr.json.tiff`, ... are slides like any other: the patch store, the
    records and the QC images stay whole, each slide keeps its id in the tables."""
    import polars as pl

    from brcatool.tiling import TileConfig, run_tile

    src = sorted(small_cohort.slides_dir.glob("*.tif*"))[0]
    stems = [".", "params", "zarr.json", "manifest", "CON", "a b", "é", "x" * 150, "-dash", "~tilde"]
    folder = _slides_named(tmp_path, src, stems)
    wd = Workdir(tmp_path / "wd")
    cfg = TileConfig(slides=[str(folder / f"{s}.tiff") for s in stems], patches=2, patch_size=64,
                     mpp_fallback=0.5)
    res = run_tile(wd, cfg, progress=False)
    table = pl.read_parquet(wd.slides_table)
    assert sorted(table["slide_id"]) == sorted(stems)
    assert set(table["status"]) == {"ok"}, table.select("slide_id", "status", "error")
    assert sorted(stores.patch_slides(wd)) == sorted(stems)
    assert (wd.patches_zarr / "zarr.json").is_file()
    assert len(list(wd.qc_dir.glob("*.png"))) == len(stems)
    again = run_tile(wd, cfg, progress=False)  # resumes: records are found under their names
    assert again.n_skipped == len(stems) and again.n_patches == res.n_patches


def test_symlinked_slide_keeps_its_name_and_symlinked_folders_are_followed(tmp_path: Path,
                                                                          small_cohort) -> None:
    from brcatool import slides

    src = sorted(small_cohort.slides_dir.glob("*.tif*"))[0]
    real = tmp_path / "store"
    real.mkdir()
    target = real / "a1b2c3d4-uuid-name.tiff"
    shutil.copy(src, target)
    links = tmp_path / "links"
    links.mkdir()
    (links / "TCGA-A1-A0SB-01Z-00-DX1.tiff").symlink_to(target)
    deep = tmp_path / "deep"
    deep.mkdir()
    (deep / "sub").symlink_to(links, target_is_directory=True)
    (links / "loop").symlink_to(tmp_path / "deep", target_is_directory=True)  # a cycle
    found = slides.find_slides([deep])
    assert [p.name for p in found] == ["TCGA-A1-A0SB-01Z-00-DX1.tiff"]
    entry = slides.make_entries([(found[0], None)])[0]
    assert entry.slide_id == "TCGA-A1-A0SB-01Z-00-DX1" and entry.patient_id == "TCGA-A1-A0SB"
    # the same file through a link and directly is tiled once
    assert len(slides.find_slides([links / "TCGA-A1-A0SB-01Z-00-DX1.tiff", target])) == 1


def test_hostile_patient_ids_through_train_and_evaluate_stay_inside(tmp_path: Path) -> None:
    """A clinical table whose patient ids hold `../`, `/`, NUL, Unicode or reserved names: the run's
    montages and attention exports are written inside the workdir, one per patient, ids intact."""
    import polars as pl

    from brcatool.evaluation import EvaluateConfig, run_evaluate
    from brcatool.synth import make_prepared_workdir
    from brcatool.training import TrainConfig, run_train

    hostile = ["../../../escaped", "/abs/path", "a/../b", ".", "..", "p\x00q", "CON", "params",
               "manifest", "zarr.json", "é", "e\u0301", "\u202erlo", "名前", ".tmp-x", "x" * 200]
    root = tmp_path / "deep" / "wd"
    prepared = make_prepared_workdir(root, patients=len(hostile), patches=3, dim=4, genes=8,
                                     patient_ids=hostile)
    wd = prepared.workdir
    index = pl.read_parquet(wd.features_index(prepared.encoder))
    for sid, n in index.select("slide_id", "n_patches").iter_rows():
        stores.write_patches(wd, sid, np.full((n, 16, 16, 3), 200, np.uint8))
    run_train(wd, TrainConfig(fusion="image", aggregator="abmil", folds=2, epochs=2, patience=1, name="h",
                              device="cpu"), progress=False)
    res = run_evaluate(wd, EvaluateConfig(run="h", bootstrap=10, top_k=2, heatmaps=False), progress=False)
    assert res.montages == len(hostile)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(_inside(p, wd.root) for p in written), [p for p in written if not _inside(p, wd.root)]
    topk = sorted(p.stem for p in (res.out_dir / "topk").glob("*.png"))
    assert topk == sorted(names.file_name(p) for p in hostile)
    att = pl.read_parquet(res.attention)
    assert sorted(att["patient_id"].unique()) == sorted(hostile)  # the ids themselves, unchanged
