"""QuPath GeoJSON: tiles and tissue outlines out, ROI annotations in (holes respected), hand-computed."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from brcatool import artifacts
from brcatool.artifacts import Workdir
from brcatool.cli.app import app
from brcatool.errors import InputError
from brcatool.interop import geojson
from brcatool.synth import make_prepared_workdir
from brcatool.synth.foreign import QuPathObject, write_qupath_geojson
from brcatool.tiling import TileConfig, run_tile

runner = CliRunner()
SQUARE_WITH_HOLE = [[[0, 0], [1024, 0], [1024, 1024], [0, 1024], [0, 0]],
                    [[384, 384], [640, 384], [640, 640], [384, 640], [384, 384]]]


def _qupath_export(path, rings, *, extra=()):
    """What QuPath writes with File > Export objects as GeoJSON (v0.4+), plus ``extra`` raw Features."""
    write_qupath_geojson(path, [QuPathObject(rings, classes=("Tumor",))])
    if extra:
        obj = json.loads(path.read_text())
        obj["features"] += list(extra)
        path.write_text(json.dumps(obj))
    return path


def _square(x, y, side):
    return [[[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]]


def _check_collection(obj):
    assert obj["type"] == "FeatureCollection" and isinstance(obj["features"], list)
    for f in obj["features"]:
        assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
        for ring in f["geometry"]["coordinates"]:
            assert len(ring) >= 4 and ring[0] == ring[-1]


def test_points_in_a_polygon_with_a_hole_by_hand():
    polys = [(np.array(SQUARE_WITH_HOLE[0], float), [np.array(SQUARE_WITH_HOLE[1], float)])]
    pts = np.array([[10, 10], [500, 500], [1100, 500], [630, 390], [700, 500], [500, 1010], [500, 300]])
    assert geojson.points_in_polygons(pts, polys).tolist() == [True, False, False, False, True, True, True]
    two = polys + [(np.array([[2000, 0], [2100, 0], [2100, 100], [2000, 100]], float), [])]
    assert geojson.points_in_polygons(np.array([[2050, 50], [1500, 50]]), two).tolist() == [True, False]


def test_read_polygons_takes_annotations_and_skips_detections(tmp_path):
    det = {"type": "Feature", "properties": {"objectType": "detection"},
           "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 0]]]}}
    multi = {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [
        [[[0, 0], [5, 0], [5, 5], [0, 0]]], [[[10, 10], [15, 10], [15, 15], [10, 10]]]]},
        "properties": {"objectType": "annotation"}}
    path = _qupath_export(tmp_path / "s.geojson", SQUARE_WITH_HOLE, extra=[det, multi])
    polys = geojson.read_polygons(path)
    assert len(polys) == 3 and len(polys[0][1]) == 1
    tri = [[[0, 0], [5, 0], [5, 5], [0, 0]]]
    old = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": tri},
           "properties": {"object_type": "annotation", "classification": {"name": "T", "colorRGB": -65536}}}
    old_det = {**old, "properties": {"object_type": "detection"}}
    (tmp_path / "old.json").write_text(json.dumps({"type": "FeatureCollection", "features": [old, old_det]}))
    assert len(geojson.read_polygons(tmp_path / "old.json")) == 1  # QuPath 0.2/0.3 spelling
    (tmp_path / "bad.geojson").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        geojson.read_polygons(tmp_path / "bad.geojson")
    (tmp_path / "pts.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}}]}))
    with pytest.raises(InputError, match="no annotation polygons"):
        geojson.read_polygons(tmp_path / "pts.geojson")


def test_qupath_02_export_kind_is_the_feature_id_and_only_annotations_are_roi(tmp_path):
    """QuPath 0.2/0.3: no objectType; ``id`` is PathAnnotationObject / PathCellObject / ... ."""
    objs = [QuPathObject(_square(0, 0, 1000), classes=("Tumor",)),
            QuPathObject(_square(5000, 5000, 20), "cell"),
            QuPathObject(_square(8000, 8000, 500), "detection"),
            QuPathObject(_square(9000, 0, 300), "tile"),
            QuPathObject(_square(2000, 0, 100))]  # an unclassified annotation
    path = write_qupath_geojson(tmp_path / "old.geojson", objs, version="0.2.3")
    raw = json.loads(path.read_text())
    assert isinstance(raw, list) and [f["id"] for f in raw] == [
        "PathAnnotationObject", "PathCellObject", "PathDetectionObject", "PathTileObject",
        "PathAnnotationObject"]
    assert not any("objectType" in f["properties"] for f in raw) and "nucleusGeometry" in raw[1]
    assert raw[0]["properties"]["classification"] == {"name": "Tumor", "colorRGB": -3670016}
    polys = geojson.read_polygons(path)
    assert len(polys) == 2
    pts = np.array([[500, 500], [5010, 5010], [8200, 8200], [9100, 100], [2050, 50]])
    assert geojson.points_in_polygons(pts, polys).tolist() == [True, False, False, False, True]
    assert geojson.object_type({"id": "3f1c0d2e", "properties": {}}) == "annotation"  # a uuid, no kind
    cell_id = {"id": "PathCellObject", "properties": {"objectType": "annotation"}}
    assert geojson.object_type(cell_id) == "annotation"  # objectType wins over the id


def test_ignored_classes_are_not_roi_and_roi_class_keeps_named_classes(tmp_path):
    """QuPath 0.4+: ``Ignore*``/``Region*`` are never ROI; --roi-class keeps only the named classes (a
    derived class ``names: [Tumor, Stroma]`` matches its full name or a part)."""
    objs = [QuPathObject(SQUARE_WITH_HOLE, classes=("Tumor",)),
            QuPathObject([_square(2000, 0, 100), _square(3000, 0, 100)], classes=("Ignore*",),
                         geometry="MultiPolygon"),
            QuPathObject(_square(0, 4000, 500), classes=("Region*",)),
            QuPathObject(_square(0, 2000, 500), classes=("Tumor", "Stroma")),
            QuPathObject(_square(2000, 2000, 500), classes=("Necrosis",))]
    path = write_qupath_geojson(tmp_path / "new.geojson", objs)
    raw = json.loads(path.read_text())
    assert raw["features"][3]["properties"]["classification"]["names"] == ["Tumor", "Stroma"]
    pts = np.array([[10, 10], [500, 500], [2050, 50], [3050, 50], [100, 4100], [100, 2100], [2100, 2100]])
    inside = {cls: geojson.points_in_polygons(pts, geojson.read_polygons(path, cls)).tolist()
              for cls in [(), ("Tumor",), ("Stroma",), ("Tumor: Stroma", "Necrosis")]}
    assert inside[()] == [True, False, False, False, False, True, True]
    assert inside[("Tumor",)] == [True, False, False, False, False, True, False]
    assert inside[("Stroma",)] == [False, False, False, False, False, True, False]
    assert inside[("Tumor: Stroma", "Necrosis")] == [False, False, False, False, False, True, True]
    with pytest.raises(InputError, match=r"no annotation polygons of class Ignore\*.*classes: Ignore\*"):
        geojson.read_polygons(path, ("Ignore*",))


def test_roi_file_is_matched_by_slide_id_also_with_the_image_suffix(tmp_path):
    _qupath_export(tmp_path / "slideA.svs.geojson", SQUARE_WITH_HOLE)
    assert geojson.find_roi_file(tmp_path, "slideA") == tmp_path / "slideA.svs.geojson"
    assert geojson.find_roi_file(tmp_path, "slideB") is None


def test_mask_outline_has_the_hole_as_an_interior_ring_in_level0_px():
    mask = np.zeros((40, 40), bool)
    mask[5:30, 5:30] = True
    mask[12:20, 12:20] = False
    coll = geojson.mask_annotations(mask, 4.0)
    _check_collection(coll)
    (feat,) = coll["features"]
    assert feat["properties"]["objectType"] == "annotation"
    assert feat["properties"]["classification"]["name"] == "Tissue"
    outer, hole = (np.array(r) for r in feat["geometry"]["coordinates"])
    # boundary pixel centres (x + 0.5) times 4 level-0 px per mask px
    assert (outer.min(0).tolist(), outer.max(0).tolist()) == ([22.0, 22.0], [118.0, 118.0])
    assert (hole.min(0).tolist(), hole.max(0).tolist()) == ([46.0, 46.0], [82.0, 82.0])
    pts = np.array([[60, 60], [30, 30], [130, 60]])
    polys = [(outer, [hole])]
    assert geojson.points_in_polygons(pts, polys).tolist() == [False, True, False]


def test_tile_collection_polygons_equal_patch_squares():
    xy = np.array([[0, 0], [512, 256]])
    coll = geojson.tile_collection(xy, np.array([256.0, 128.0]), np.array([0.2, 0.8]), measurement="w",
                                   extra={"predicted probability": 0.9})
    _check_collection(coll)
    a, b = coll["features"]
    assert a["geometry"]["coordinates"] == [[[0, 0], [256, 0], [256, 256], [0, 256], [0, 0]]]
    assert b["geometry"]["coordinates"][0][2] == [640, 384]
    assert b["properties"]["measurements"] == {"w": 0.8, "predicted probability": 0.9}
    assert a["properties"]["objectType"] == "tile" and a["properties"]["isLocked"] is True
    assert a["properties"]["color"] != b["properties"]["color"]


@pytest.fixture(scope="module")
def roi_tiles(small_cohort, tmp_path_factory):
    """The same slides tiled (every candidate) without and with ROIs; the first slide has an ROI."""
    root = tmp_path_factory.mktemp("roi")
    slides = sorted(p for p in small_cohort.slides_dir.iterdir())[:2]
    sid = slides[0].stem
    roi_dir = root / "rois"
    roi_dir.mkdir()
    _qupath_export(roi_dir / f"{sid}.geojson", SQUARE_WITH_HOLE)
    out = {}
    for name, extra in (("none", {}), ("skip", {"roi": str(roi_dir), "roi_missing": "skip"}),
                        ("whole", {"roi": str(roi_dir), "roi_missing": "whole"})):
        wd = Workdir(root / name)
        cfg = TileConfig(slides=[str(p) for p in slides], sampling="all", patch_size=128, mpp=0.5, **extra)
        res = run_tile(wd, cfg, progress=False)
        out[name] = (wd, res, artifacts.read_parquet(wd.patches_table, schema="patches"))
    # the Tumor ROI beside a Stroma square, and an Ignore* square over part of the Tumor one, via the CLI
    classes_dir = root / "rois-classes"
    write_qupath_geojson(classes_dir / f"{sid}.geojson", [
        QuPathObject(SQUARE_WITH_HOLE, classes=("Tumor",)),
        QuPathObject(_square(1024, 0, 512), classes=("Stroma",)),
        QuPathObject(_square(0, 0, 4096), classes=("Ignore*",))])
    for name, extra in (("class", ["--roi-class", "Tumor,Necrosis"]), ("ignore", [])):
        wd = Workdir(root / name)
        args = ["tile", str(slides[0]), "--roi", str(classes_dir), "--sampling", "all", "--patch-size", "128",
                "--mpp", "0.5", "-w", str(wd.root), "-q", *extra]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        out[name] = (wd, None, artifacts.read_parquet(wd.patches_table, schema="patches"))
    return sid, slides[1].stem, out


def test_roi_keeps_exactly_the_tissue_candidates_inside_it(roi_tiles):
    sid, other, out = roi_tiles
    base = out["none"][2].filter(pl.col("slide_id") == sid)
    assert set(base["size"]) == {128} and set(base["mpp"]) == {0.5}  # 128 level-0 px per patch
    # by hand: centres (x + 64, y + 64) inside [0, 1024)^2 and not in the hole (384, 640)^2
    want = {(x, y) for x, y in base.select("x", "y").iter_rows()
            if x + 64 < 1024 and y + 64 < 1024 and not (384 < x + 64 < 640 and 384 < y + 64 < 640)}
    got = out["skip"][2].filter(pl.col("slide_id") == sid)
    assert {(x, y) for x, y in got.select("x", "y").iter_rows()} == want
    in_hole = [(x, y) for x, y in base.select("x", "y").iter_rows()
               if 384 < x + 64 < 640 and 384 < y + 64 < 640]
    assert want and in_hole and len(want) + len(in_hole) < base.height  # the hole and the outside both cut


def test_roi_class_and_ignored_classes_through_the_cli(roi_tiles):
    sid, _, out = roi_tiles
    tumour = {tuple(r) for r in out["skip"][2].filter(pl.col("slide_id") == sid).select("x", "y").iter_rows()}
    got = {tuple(r) for r in out["class"][2].select("x", "y").iter_rows()}
    assert got == tumour  # --roi-class Tumor: the Stroma square is left out; Ignore* never counts
    base = out["none"][2].filter(pl.col("slide_id") == sid)
    stroma = {(x, y) for x, y in base.select("x", "y").iter_rows() if 1024 < x + 64 < 1536 and y + 64 < 512}
    both = {tuple(r) for r in out["ignore"][2].select("x", "y").iter_rows()}
    assert stroma and both == tumour | stroma  # no --roi-class: every class but Ignore* (the whole slide)
    cfg = artifacts.read_json(out["class"][0].stage_manifest("tile"))
    assert cfg["params"]["roi_class"] == ["Tumor", "Necrosis"]


def test_slides_without_roi_follow_roi_missing(roi_tiles):
    sid, other, out = roi_tiles
    rows = {r["slide_id"]: r for r in out["skip"][1].rows}
    assert rows[other]["status"] == "no_roi" and "no ROI file" in rows[other]["error"]
    whole = out["whole"][2].filter(pl.col("slide_id") == other)
    base = out["none"][2].filter(pl.col("slide_id") == other)
    assert whole.select("x", "y").equals(base.select("x", "y")) and whole.height > 0


def test_tile_writes_tissue_outlines_for_qupath(roi_tiles):
    sid, _, out = roi_tiles
    wd, _, patches = out["none"]
    coll = json.loads((wd.qc_dir / f"{sid}.geojson").read_text())
    _check_collection(coll)
    assert coll["features"] and all(f["properties"]["objectType"] == "annotation" for f in coll["features"])
    rings = [f["geometry"]["coordinates"] for f in coll["features"]]
    polys = [(np.array(r[0]), [np.array(h) for h in r[1:]]) for r in rings]
    mine = patches.filter(pl.col("slide_id") == sid)
    centres = mine.select("x", "y").to_numpy() + 64
    inside = geojson.points_in_polygons(centres, polys)
    assert inside.mean() >= 0.9  # patches were chosen under the same mask (>= 50 % tissue)


def test_evaluate_geojson_tiles_match_patch_coordinates(tmp_path):
    from brcatool.training import TrainConfig, run_train

    prep = make_prepared_workdir(tmp_path, patients=16, patches=4, dim=8, views=1, genes=8, seed=2)
    run_train(tmp_path, TrainConfig(fusion="image", aggregator="mean", epochs=2, folds=2, device="cpu",
                                    name="m"), progress=False)
    out = runner.invoke(app, ["evaluate", "-w", str(tmp_path), "--run", "m", "--geojson", "--bootstrap", "0",
                              "--no-plots", "--top-k", "0", "-q"])
    assert out.exit_code == 0, out.output
    gdir = Workdir(tmp_path).run_dir("m") / "eval" / "geojson"
    patches = artifacts.read_parquet(Workdir(tmp_path).patches_table, schema="patches")
    files = sorted(gdir.glob("*.geojson"))
    assert len(files) == prep.n_slides
    coll = json.loads(files[0].read_text())
    _check_collection(coll)
    props = coll["properties"]
    assert props["method"] == "occlusion" and props["predicted_class"] in prep.classes
    assert 0.5 <= props["probability"] <= 1.0
    mine = patches.filter(pl.col("slide_id") == props["slide_id"]).sort("patch_index")
    for f, row in zip(coll["features"], mine.iter_rows(named=True), strict=True):
        s = row["size"] * row["mpp"] / 0.5  # slides.parquet mpp of the prepared workdir
        x, y = row["x"], row["y"]
        assert f["geometry"]["coordinates"] == [[[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]]
        assert set(f["properties"]["measurements"]) == {"occlusion contribution", "predicted probability"}


def test_whole_coordinates_are_json_integers_and_others_keep_two_decimals(tmp_path):
    mask = np.zeros((20, 20), bool)
    mask[4:12, 4:12] = True
    whole = geojson.write(tmp_path / "a.geojson", geojson.mask_annotations(mask, 4.0)).read_text()
    odd = geojson.write(tmp_path / "b.geojson", geojson.mask_annotations(mask, 4.123)).read_text()
    assert "[18,18]" in whole and ".0," not in whole  # (4 + 0.5) * 4: an integer, not 18.0
    a, b = (np.array(json.loads(t)["features"][0]["geometry"]["coordinates"][0]) for t in (whole, odd))
    assert a.dtype.kind == "i" and b.dtype.kind == "f"
    assert np.array_equal(np.round(a * 4.123 / 4.0, 2), b)  # the same outline, scaled


def test_each_ring_of_a_mask_outline_is_integers_or_floats_on_its_own():
    # scale 2/3: a boundary pixel x maps to (x + 0.5) * 2/3, whole for x = 1, 4, 7, ...; the rings of
    # a mask are converted together, yet each ring is written as integers only when all of it is whole
    mask = np.zeros((40, 40), bool)
    mask[1:5, 1:5] = True  # boundary pixels 1 and 4 -> 1 and 3: an integer ring
    mask[10:30, 10:30] = True  # 10 and 29 -> 7 and 19.67: floats
    mask[16:23, 16:23] = False  # its hole: floats
    mask[31:36, 31:36] = True  # 31 and 35 -> 21 and 23.67: floats
    scale = 2 / 3
    coll = geojson.mask_annotations(mask, scale)
    rings = [r for f in coll["features"] for r in f["geometry"]["coordinates"]]
    kinds = {type(r[0][0]).__name__ for r in rings}
    assert len(rings) == 4 and kinds == {"int", "float"}
    for r in rings:
        v = np.array(r, dtype=np.float64)
        assert r[0] == r[-1] and len(r) >= 4  # closed
        whole = all(isinstance(c, int) for p in r for c in p)
        assert whole == bool(np.all(v == np.round(v)))  # integers exactly when every point is whole
