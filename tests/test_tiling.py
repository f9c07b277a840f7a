"""The tile stage on a synthetic cohort of real pyramidal TIFFs, checked against the truth masks."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import cv2
import numpy as np
import openslide
import polars as pl
import pytest
from typer.testing import CliRunner

from brcatool import artifacts, stores
from brcatool.artifacts import Workdir
from brcatool.errors import ArtifactError, InputError
from brcatool.patchgrid import allocate, candidate_grid, select, tissue_mask
from brcatool.synth import make_cohort
from brcatool.tiling import TileConfig, run_tile

DATA = Path(__file__).parent / "data"
BUDGET = 4


# --------------------------------------------------------------------------- unit
def test_allocate_shares_budget_by_candidates() -> None:
    assert allocate(10, {"a": 30, "b": 10, "c": 0}) == {"a": 8, "b": 2, "c": 0}  # 7.5/2.5, tie -> "a"
    assert allocate(10, {"a": 3, "b": 4}) == {"a": 3, "b": 4}  # fewer than the budget: all
    assert allocate(None, {"a": 30, "b": 10}) == {"a": 30, "b": 10}
    split = allocate(35, {"x": 17, "y": 101, "z": 58})
    assert sum(split.values()) == 35 and all(split[k] <= c for k, c in {"x": 17, "y": 101, "z": 58}.items())


def test_select_random_and_spread() -> None:
    yy, xx = np.mgrid[0:20, 0:20]
    xy = np.stack([xx.ravel(), yy.ravel()], axis=1) * 100
    a = select(xy, 7, "random", np.random.default_rng(1))
    assert len(set(a.tolist())) == 7 and np.all(np.diff(a) > 0)
    assert np.array_equal(a, select(xy, 7, "random", np.random.default_rng(1)))
    s = select(xy, 4, "spread", np.random.default_rng(1))
    d = np.sqrt(((xy[s][:, None] - xy[s][None]) ** 2).sum(-1))
    # farthest-point sampling is a 2-approximation of the best spread (the corners, 1900 apart)
    assert d[np.triu_indices(4, 1)].min() >= 950
    assert len(select(xy, 999, "spread", np.random.default_rng(0))) == 400


def test_tissue_mask_keeps_tissue_drops_specks_and_blank() -> None:
    img = np.full((200, 300, 3), 242, np.uint8)
    cv2.circle(img, (100, 100), 60, (220, 130, 190), -1)  # pink tissue
    cv2.circle(img, (250, 30), 2, (220, 130, 190), -1)  # a speck
    for method in ("otsu-sat", "otsu-gray"):
        mask = tissue_mask(img, method=method, min_area_px=200)
        assert mask[100, 100] and not mask[30, 250] and not mask[190, 290]
        assert abs(mask.sum() - np.pi * 60**2) < 0.05 * np.pi * 60**2
        noise = np.random.default_rng(0).integers(238, 247, (100, 100, 3)).astype(np.uint8)
        assert not tissue_mask(noise, method=method).any()


def test_candidate_grid_uses_mask_fraction() -> None:
    mask = np.zeros((32, 64), bool)
    mask[:, :24] = True  # left 384 of 1024 level-0 px
    xy, frac = candidate_grid(mask, (1024, 512), 256.0, 256.0, 0.5)
    assert sorted(set(xy[:, 0].tolist())) == [0, 256] and len(xy) == 4
    assert np.allclose(frac[xy[:, 0] == 0], 1.0) and np.allclose(frac[xy[:, 0] == 256], 0.5)


# --------------------------------------------------------------------------- stage
@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("cohort")
    files = make_cohort(out / "c", patients=4, seed=3, slide_size=(1280, 1024), genes=60,
                        no_tissue_slides=1, progress=False)
    bad = out / "bad"
    bad.mkdir()
    shutil.copy(DATA / "unreadable.svs", bad / "unreadable.svs")  # opens, corrupt tile
    shutil.copy(DATA / "unopenable.tiff", bad / "unopenable.tiff")
    (bad / "notes.txt").write_text("not a slide")
    return files, [str(files.slides_dir), str(bad / "unreadable.svs"), str(bad / "unopenable.tiff"),
                   str(bad / "notes.txt")]


@pytest.fixture(scope="module")
def tiled(cohort, tmp_path_factory: pytest.TempPathFactory):
    files, inputs = cohort
    wd = Workdir(tmp_path_factory.mktemp("work"))
    cfg = TileConfig(slides=inputs, patches=BUDGET, seed=5)
    return files, cfg, wd, run_tile(wd, cfg, progress=False)


def _on_tissue(files, patches_df: pl.DataFrame) -> np.ndarray:
    """Per patch, the fraction of its area that is tissue in the truth mask (one read per slide)."""
    truth = {s.slide_id: s.truth_mask for s in files.slides}
    ds, masks, out = files.truth_downsample, {}, []
    for row in patches_df.iter_rows(named=True):
        sid = row["slide_id"]
        if sid not in masks:
            masks[sid] = cv2.imread(str(truth[sid]), cv2.IMREAD_GRAYSCALE) > 0
        x0, y0, side = row["x"] // ds, row["y"] // ds, row["size"] // ds
        out.append(masks[sid][y0: y0 + side, x0: x0 + side].mean())
    return np.asarray(out)


def _tables(wd: Workdir) -> tuple[pl.DataFrame, pl.DataFrame]:
    return (artifacts.read_parquet(wd.slides_table, schema="slides"),
            artifacts.read_parquet(wd.patches_table, schema="patches"))


def test_bad_inputs_are_rows_and_the_run_goes_on(tiled) -> None:
    files, _, wd, result = tiled
    slides_df, _ = _tables(wd)
    status = dict(zip(slides_df["slide_id"], slides_df["status"], strict=True))
    blank = [s.slide_id for s in files.slides if s.blank]
    assert len(blank) == 1 and status[blank[0]] == "no_tissue"
    assert status["unreadable"] == status["unopenable"] == status["notes"] == "failed"
    errors = dict(zip(slides_df["slide_id"], slides_df["error"], strict=True))
    assert all(errors[s] and "\n" not in errors[s] for s in ("unreadable", "unopenable", "notes"))
    assert result.count("ok") == len(files.slides) - 1
    assert (wd.qc_dir / f"{blank[0]}.png").is_file()


def test_budget_per_patient_and_store_layout(tiled) -> None:
    files, _, wd, result = tiled
    slides_df, patches_df = _tables(wd)
    ok = slides_df.filter(pl.col("status") == "ok")
    per_patient = ok.group_by("patient_id").agg(pl.col("n_patches").sum(), pl.col("n_candidates").sum())
    assert per_patient.height == len({s.patient_id for s in files.slides if not s.blank})
    for row in per_patient.iter_rows(named=True):
        assert row["n_patches"] == min(BUDGET, row["n_candidates"])
    assert result.n_patches == patches_df.height == ok["n_patches"].sum()
    assert sorted(stores.patch_slides(wd)) == sorted(ok.filter(pl.col("n_patches") > 0)["slide_id"])
    for sid in stores.patch_slides(wd):
        rows = patches_df.filter(pl.col("slide_id") == sid)
        arr = stores.read_patches(wd, sid)
        assert arr.shape == (rows.height, 256, 256, 3) and arr.dtype == np.uint8
        assert rows["patch_index"].to_list() == list(range(rows.height))
        assert (wd.qc_dir / f"{sid}.png").is_file()
    assert artifacts.read_json(wd.stage_manifest("tile"))["counts"]["patches"] == patches_df.height
    assert wd.stage_manifest("tile").with_suffix(".yaml").is_file()


def test_patches_lie_on_true_tissue(tiled) -> None:
    files, _, wd, _ = tiled
    _, patches_df = _tables(wd)
    fractions = _on_tissue(files, patches_df)
    assert len(fractions) >= 8
    assert np.mean(fractions >= 0.5) >= 0.95


def test_stored_pixels_equal_openslide(tiled) -> None:
    files, _, wd, _ = tiled
    _, patches_df = _tables(wd)
    paths = {s.slide_id: s.path for s in files.slides}
    assert stores.patch_slides(wd)
    for sid in stores.patch_slides(wd)[:3]:
        rows = patches_df.filter(pl.col("slide_id") == sid)
        assert rows.height > 0
        arr = np.asarray(stores.read_patches(wd, sid)[...])
        with openslide.OpenSlide(str(paths[sid])) as s:
            for row in rows.iter_rows(named=True):
                assert row["level"] == 0 and row["mpp"] == pytest.approx(0.5)
                ref = np.asarray(s.read_region((row["x"], row["y"]), 0, (256, 256)))[..., :3]
                assert np.array_equal(arr[row["patch_index"]], ref)


def test_deterministic_parallel_and_seeded(tiled, tmp_path: Path) -> None:
    _, cfg, wd, _ = tiled
    _, first = _tables(wd)
    again = dataclasses.replace(cfg, workers=2)
    run_tile(tmp_path / "a", again, progress=False)
    _, second = _tables(Workdir(tmp_path / "a"))
    assert first.select("slide_id", "x", "y").equals(second.select("slide_id", "x", "y"))
    run_tile(tmp_path / "b", dataclasses.replace(cfg, seed=6, slides=cfg.slides[:1]), progress=False)
    _, other = _tables(Workdir(tmp_path / "b"))
    assert not first.select("slide_id", "x", "y").equals(other.select("slide_id", "x", "y"))
    assert set(other["slide_id"]) == set(first["slide_id"])


def test_resume_skips_finished_and_redoes_missing(tiled, tmp_path: Path) -> None:
    _, cfg, wd0, _ = tiled
    wd = Workdir(tmp_path / "w")
    shutil.copytree(wd0.root, wd.root)
    _, before = _tables(wd)
    done = [r for r in run_tile(wd, cfg, progress=False).rows if r["status"] != "failed"]
    again = run_tile(wd, cfg, progress=False)
    assert again.n_skipped == len(done)  # failed slides are retried, the rest skipped
    victim = stores.patch_slides(wd)[0]
    shutil.rmtree(wd.patches_zarr / victim)  # as if the run died before this slide was stored
    # a rewritten slide is a new directory (atomic_path swaps it in), so a new inode
    inodes = {s: (wd.patches_zarr / s).stat().st_ino for s in stores.patch_slides(wd)}
    resumed = run_tile(wd, cfg, progress=False)
    assert resumed.n_skipped == len(done) - 1
    assert victim in stores.patch_slides(wd)
    assert all((wd.patches_zarr / s).stat().st_ino == ino for s, ino in inodes.items())
    _, after = _tables(wd)
    assert before.equals(after)
    with pytest.raises(ArtifactError, match="other parameters"):
        run_tile(wd, dataclasses.replace(cfg, patches=BUDGET + 1), progress=False)
    more = run_tile(wd, dataclasses.replace(cfg, patches=BUDGET + 1, overwrite=True), progress=False)
    assert more.n_skipped == 0 and more.n_patches > before.height


def test_magnification_20_equals_mpp_half(tiled, tmp_path: Path) -> None:
    files, cfg, wd, _ = tiled
    _, ref = _tables(wd)
    # --magnification wins over --mpp: 20x means 0.5 µm/px, whatever mpp says
    mag = dataclasses.replace(cfg, slides=[str(files.slides_dir)], magnification=20.0, mpp=2.0)
    first = run_tile(tmp_path / "m", mag, progress=False)
    _, got = _tables(Workdir(tmp_path / "m"))
    assert got["mpp"].unique().to_list() == [pytest.approx(0.5)]
    cols, key = ("slide_id", "patch_index", "x", "y", "level"), ("slide_id", "patch_index")
    assert got.select(cols).sort(key).equals(ref.select(cols).sort(key))
    # the same outputs spelled differently (--mpp 0.5, --stride = --patch-size) resume, not refuse
    same = dataclasses.replace(mag, magnification=None, mpp=0.5, stride=mag.patch_size)
    again = run_tile(tmp_path / "m", same, progress=False)
    assert first.n_skipped == 0 and again.n_skipped == len(again.rows) == len(first.rows)
    _, after = _tables(Workdir(tmp_path / "m"))
    assert after.equals(got)


def test_spread_sampling_keeps_budget_tissue_and_determinism(tiled, tmp_path: Path) -> None:
    files, _, wd0, _ = tiled
    cfg = TileConfig(slides=[str(files.slides_dir)], patches=BUDGET, sampling="spread", seed=5)
    result = run_tile(tmp_path / "a", cfg, progress=False)
    slides_df, patches_df = _tables(Workdir(tmp_path / "a"))
    ok = slides_df.filter(pl.col("status") == "ok")
    per_patient = ok.group_by("patient_id").agg(pl.col("n_patches").sum(), pl.col("n_candidates").sum())
    assert per_patient.height >= 2
    for row in per_patient.iter_rows(named=True):
        assert row["n_patches"] == min(BUDGET, row["n_candidates"])
    assert result.n_patches == patches_df.height > 0
    assert np.all(_on_tissue(files, patches_df) >= 0.5)
    # seeded: the same picks on a re-run, and other picks than the random draw with that seed
    run_tile(tmp_path / "b", cfg, progress=False)
    _, again = _tables(Workdir(tmp_path / "b"))
    assert again.select("slide_id", "x", "y").equals(patches_df.select("slide_id", "x", "y"))
    _, randomly = _tables(wd0)
    assert not randomly.select("slide_id", "x", "y").equals(patches_df.select("slide_id", "x", "y"))


def test_slide_without_mpp_fails_alone_and_names_the_fallback(cohort, tmp_path: Path) -> None:
    files, _ = cohort
    good = next(s for s in files.slides if not s.blank)
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(DATA / "boxes.tiff", folder / "boxes.tiff")
    shutil.copy(good.path, folder / Path(good.path).name)
    result = run_tile(tmp_path / "w", TileConfig(slides=[str(folder)], patches=BUDGET), progress=False)
    rows = {r["slide_id"]: r for r in result.rows}
    assert rows["boxes"]["status"] == "failed" and "mpp-fallback" in rows["boxes"]["error"]
    assert rows[good.slide_id]["status"] == "ok" and rows[good.slide_id]["n_patches"] > 0
    assert result.n_patches == rows[good.slide_id]["n_patches"]


def test_table_input_mpp_fallback_and_all(cohort, tmp_path: Path) -> None:
    files, _ = cohort
    shutil.copy(DATA / "boxes.tiff", tmp_path / "boxes.tiff")
    two = [s for s in files.slides if not s.blank][:2]
    table = tmp_path / "slides.tsv"
    table.write_text("path\tpatient_id\n" + "".join(f"{s.path}\tP1\n" for s in two) + "boxes.tiff\tP2\n")
    cfg = TileConfig(slides_table=str(table), sampling="all", patch_size=64, mpp=2.0, mpp_fallback=1.0)
    result = run_tile(tmp_path / "w", cfg, progress=False)
    rows = {r["slide_id"]: r for r in result.rows}
    assert rows["boxes"]["status"] != "failed" and rows["boxes"]["mpp"] == 1.0
    for s in two:
        assert rows[s.slide_id]["patient_id"] == "P1"
        assert rows[s.slide_id]["n_patches"] == rows[s.slide_id]["n_candidates"] > 0
    _, patches_df = _tables(Workdir(tmp_path / "w"))
    assert set(patches_df.filter(pl.col("slide_id") == two[0].slide_id)["level"].to_list()) == {1}
    with pytest.raises(InputError, match="--patches"):
        run_tile(tmp_path / "w2", dataclasses.replace(cfg, patches=0), progress=False)


def test_cli_exit_codes_and_summary(cohort, tmp_path: Path) -> None:
    from brcatool.cli.app import app

    files, inputs = cohort
    runner = CliRunner()
    args = ["tile", *inputs, "-w", str(tmp_path / "w"), "-n", "3", "-q"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*args[:-1], "--strict"])
    assert res.exit_code == 1 and "failed" in res.output and "unreadable" in res.output
    res = runner.invoke(app, ["tile", str(DATA / "unopenable.tiff"), "-w", str(tmp_path / "x"), "-q"])
    assert res.exit_code == 1 and "no slide gave patches" in res.output
    res = runner.invoke(app, ["tile", str(tmp_path / "nowhere"), "-w", str(tmp_path / "y")])
    assert res.exit_code == 1 and "no such file" in res.output and "Traceback" not in res.output


# --------------------------------------------------------------------------- outputs pinned
REFERENCE = DATA / "tile_reference.json"
REFERENCE_RUNS = {  # name -> options over the cohort fixture (the first is the `tiled` fixture's)
    "random": dict(patches=BUDGET, seed=5),
    "all": dict(sampling="all", seed=5),
    "spread-2-workers": dict(patches=6, sampling="spread", workers=2, seed=1),
}


def _strip_ids(obj, coordinates: bool = False):
    """GeoJSON content to compare: without the feature ids (random UUIDs), coordinates as floats
    (a whole-number coordinate is written as a JSON integer, ``8`` for ``8.0``: the same number)."""
    if isinstance(obj, dict):
        return {k: _strip_ids(v, k == "coordinates") for k, v in obj.items() if k != "id"}
    if isinstance(obj, list):
        return [_strip_ids(v, coordinates) for v in obj]
    return float(obj) if coordinates and isinstance(obj, int) else obj


def output_digests(wd: Workdir) -> dict[str, str]:
    """sha256 (16 hex) of every tile output's content: the tables (without the `seconds` timing and
    the machine-specific `path`), each stored patch array and its attributes, the QC images' pixels
    and the tissue GeoJSON (without feature ids)."""
    import hashlib
    import json

    def sha(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()[:16]

    slides_df, patches_df = _tables(wd)
    out = {"slides.parquet": sha(slides_df.drop("seconds", "path").write_csv().encode()),
           "patches.parquet": sha(patches_df.write_csv().encode())}
    for sid in sorted(stores.patch_slides(wd)):
        arr = stores.read_patches(wd, sid)
        attrs = json.dumps(dict(arr.attrs), sort_keys=True).encode()
        out[f"patches.zarr/{sid}"] = sha(np.asarray(arr[...]).tobytes() + attrs)
    for f in sorted(wd.qc_dir.iterdir()):
        data = (cv2.imread(str(f)).tobytes() if f.suffix == ".png"
                else json.dumps(_strip_ids(json.loads(f.read_text()))).encode())
        out[f"qc/{f.name}"] = sha(data)
    return out


def test_outputs_equal_the_recorded_reference(tiled, tmp_path: Path) -> None:
    """Speed work must not change a byte: the outputs of three runs equal digests recorded before the
    performance changes of issue 17 (patches, tables, QC pixels, GeoJSON). After a library upgrade
    that changes the synthetic slides' pixels, re-record on an unchanged commit with
    BRCATOOL_WRITE_TILE_REFERENCE=1 pytest tests/test_tiling.py -k reference."""
    import json
    import os

    _, cfg, wd, _ = tiled
    got = {"random": output_digests(wd)}
    for name, options in list(REFERENCE_RUNS.items())[1:]:
        other = Workdir(tmp_path / name)
        run_tile(other, TileConfig(slides=[cfg.slides[0]], **options), progress=False)
        got[name] = output_digests(other)
    if os.environ.get("BRCATOOL_WRITE_TILE_REFERENCE"):
        REFERENCE.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip("reference re-recorded; run again without BRCATOOL_WRITE_TILE_REFERENCE to compare")
    want = json.loads(REFERENCE.read_text())
    for name in REFERENCE_RUNS:
        diff = sorted(k for k in set(want[name]) | set(got[name]) if want[name].get(k) != got[name].get(k))
        assert not diff, f"{name}: outputs differ from the reference: {diff}"


@pytest.mark.parametrize("fail", [None, "extract", "interrupt"])
def test_slide_handles_are_closed_after_each_slide_and_share_one_cache(cohort, tmp_path, monkeypatch,
                                                                       fail) -> None:
    """A slide stays open from its scan to its extract only: closed right after its own extract
    (not at the unit's end), on a failed extract and on Ctrl-C too; a patient's slides share one
    tile cache (the memory of one slide's, however many slides)."""
    from brcatool import slides as slides_mod
    from brcatool import tile_slide

    files, inputs = cohort
    opened, caches, log = [], [], []
    real_open = slides_mod.open_slide

    def tracked(path):  # noqa: ANN001, ANN202
        s = real_open(path)
        opened.append(s)
        real_close, real_set = s.close, s.set_cache
        s.close = lambda: (log.append(("close", Path(path).stem)), real_close())[1]
        s.set_cache = lambda c: (caches.append(c), real_set(c))[1]
        return s

    real_extract = tile_slide.extract_slide

    def extract(entry, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        log.append(("extract", entry.slide_id))
        if fail == "extract":  # what extract_slide returns when its reads or writes fail
            return {**tile_slide.failed_row(entry, OSError("disk full"), 0.0), "n_patches": 0}
        if fail == "interrupt":
            raise KeyboardInterrupt
        return real_extract(entry, *a, **k)

    monkeypatch.setattr(slides_mod, "open_slide", tracked)
    monkeypatch.setattr(tile_slide, "extract_slide", extract)
    two = sorted(p for p in Path(files.slides_dir).rglob("*.tiff") if "A8-Y0BE" in p.name)
    assert len(two) == 2  # one patient, two slides
    cfg = TileConfig(slides=[str(p) for p in two], patches=BUDGET, seed=5)
    if fail == "interrupt":
        with pytest.raises(KeyboardInterrupt):
            run_tile(Workdir(tmp_path / "w"), cfg, progress=False)
    else:
        run_tile(Workdir(tmp_path / "w"), cfg, progress=False)
    closes = [who for what, who in log if what == "close"]
    assert len(opened) == 2 and sorted(closes) == sorted(p.stem for p in two)  # each once
    assert len(caches) == 2 and caches[0] is caches[1]
    if fail != "interrupt":  # each slide closed right after its own extract, before the next one's
        extracts = [i for i, (what, _) in enumerate(log) if what == "extract"]
        assert len(extracts) == 2 and log.index(("close", log[extracts[0]][1])) < extracts[1]
