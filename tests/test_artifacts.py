from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from brcatool import artifacts, stores, zarr_io
from brcatool.artifacts import Workdir
from brcatool.errors import ArtifactError


def test_atomic_path_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "table.json"
    artifacts.write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with artifacts.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["table.json"]  # no temporaries left


def test_atomic_path_replaces_directories(tmp_path):
    target = tmp_path / "store"
    for value in ("old", "new"):
        with artifacts.atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "x").write_text(value)
    assert (target / "x").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_parquet_schema_stamp_round_trip_and_refusal(tmp_path):
    df = pl.DataFrame({"patient_id": ["a", "b"], "target": [0, 1]})
    path = artifacts.write_parquet(df, tmp_path / "labels.parquet", schema="labels")
    assert artifacts.read_parquet(path, schema="labels").equals(df)
    with pytest.raises(ArtifactError, match="expected 'cohort'"):
        artifacts.read_parquet(path, schema="cohort")
    plain = tmp_path / "plain.parquet"
    df.write_parquet(plain)
    with pytest.raises(ArtifactError, match="holds schema None"):
        artifacts.read_parquet(plain, schema="labels")


def test_read_parquet_missing_names_the_stage(tmp_path):
    with pytest.raises(ArtifactError, match="brcatool prep-expr"):
        artifacts.read_parquet(tmp_path / "labels.parquet", schema="labels", made_by="prep-expr")


def test_parquet_refuses_future_schema_version(tmp_path, monkeypatch):
    path = artifacts.write_parquet(pl.DataFrame({"a": [1]}), tmp_path / "t.parquet", schema="labels")
    monkeypatch.setitem(artifacts.SCHEMAS, "labels", 99)
    with pytest.raises(ArtifactError, match="version 1 is not supported"):
        artifacts.read_parquet(path, schema="labels")


def test_patch_store_round_trip_and_stamp(tmp_path):
    wd = Workdir(tmp_path)
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 255, size=(5, 16, 16, 3), dtype=np.uint8)
    stores.write_patches(wd, "slide.A", patches)
    assert stores.patch_slides(wd) == ["slide.A"]
    np.testing.assert_array_equal(stores.read_patches(wd, "slide.A")[...], patches)
    with pytest.raises(ArtifactError, match="expected 'feature-store'"):
        zarr_io.open_group(wd.patches_zarr, schema="feature-store")


def test_feature_store_is_float16(tmp_path):
    wd = Workdir(tmp_path)
    feats = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    stores.write_features(wd, "resnet50", "s1", feats)
    out = stores.read_features(wd, "resnet50", "s1")
    assert out.dtype == np.float16 and out.shape == (2, 3, 4)
    np.testing.assert_allclose(out, feats)


def test_manifest_and_check_params(tmp_path):
    src = tmp_path / "input.tsv"
    src.write_text("x")
    m = artifacts.Manifest("tile", {"patches": 35, "sizes": (256,)})
    m.add_input(src)
    path = m.write(tmp_path / "manifest.json", counts={"slides": 2})
    body = json.loads(path.read_text())
    assert body["params"] == {"patches": 35, "sizes": [256]}
    assert body["inputs"][0]["size"] == 1 and body["counts"] == {"slides": 2}
    assert {"brcatool", "zarr", "torch"} <= set(body["versions"])
    assert artifacts.check_params(path, {"patches": 35, "sizes": [256]}, overwrite=False, what="x")
    assert not artifacts.check_params(path, {"patches": 10}, overwrite=True, what="x")
    with pytest.raises(ArtifactError, match="patches: 35 -> 10"):
        artifacts.check_params(path, {"patches": 10, "sizes": [256]}, overwrite=False, what="tiles")
