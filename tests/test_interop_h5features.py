"""Readers of foreign feature files: every registered layout round-trips, bad files are one-line errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from brcatool.errors import InputError
from brcatool.interop import h5features
from brcatool.interop.h5features import LAYOUTS, ReadOptions, geometry_from_attrs, read_slide
from brcatool.synth.foreign import (
    clam_patch_attrs,
    make_foreign_features,
    trident_coords_attrs,
    write_stamp,
    write_trident,
)

#: every registered layout, plus the variants of the real tools' output: TRIDENT ``--saveas pt`` (a pickled
#: numpy array) and STAMP 2.0 (``tile_size`` before 2.1 named it ``tile_size_um``)
VARIANTS = [(name, None) for name in sorted(LAYOUTS)] + [("pt", "trident"), ("stamp", "2.0.0")]


@pytest.mark.parametrize(("layout", "variant"), VARIANTS)
def test_every_layout_reads_back_features_and_level0_coords(tmp_path, layout, variant):
    fs = make_foreign_features(tmp_path, layout, patients=3, patches=5, dim=8, variant=variant)
    found = LAYOUTS[layout].find(fs.source)
    assert sorted(s for s, _ in found) == sorted(fs.features)
    opts = ReadOptions(mpp=fs.mpp, coords_dir=fs.coords_dir)
    for sid, path in found:
        sf = read_slide(layout, sid, path, opts)
        np.testing.assert_array_equal(sf.features, fs.features[sid])
        np.testing.assert_array_equal(sf.coords, fs.coords[sid])
        assert sf.geometry.size0 == pytest.approx(fs.size0)
        assert sf.geometry.mpp0 == pytest.approx(fs.mpp)


def test_clam_and_trident_attributes_give_the_patch_geometry(tmp_path):
    clam = geometry_from_attrs(clam_patch_attrs("s", patch_size=256, patch_level=1, downsample=4.0,
                                                level0=(40000, 30000)), ReadOptions(), tmp_path)
    assert (clam.size0, clam.out_size, clam.level) == (1024.0, 256, 1)
    assert (clam.width0, clam.height0) == (40000, 30000)
    tri = geometry_from_attrs(trident_coords_attrs("s", patch_size=224, mag0=40, target_mag=10),
                              ReadOptions(), tmp_path)
    assert (tri.size0, tri.out_size, tri.mpp0) == (896.0, 224, pytest.approx(0.25))
    older = {k: v for k, v in trident_coords_attrs("s", patch_size=224, mag0=40, target_mag=10).items()
             if k != "patch_size_level0"}
    assert geometry_from_attrs(older, ReadOptions(), tmp_path).size0 == 896.0
    with pytest.raises(InputError, match="no patch_size/patch_level"):
        geometry_from_attrs({}, ReadOptions(), tmp_path)
    assert geometry_from_attrs({}, ReadOptions(patch_size=300), tmp_path).size0 == 300.0


def test_trident_records_its_encoder_and_a_magnification_mpp_is_marked_a_guess(tmp_path):
    feats, coords = np.ones((2, 4), np.float32), np.array([[0, 0], [512, 0]])
    path = write_trident(tmp_path, "uni_v1", "slideA", feats, coords)
    with h5py.File(path) as f:  # as TRIDENT writes it: encoder on features, no slide size on coords
        assert f["features"].attrs["encoder"] == "uni_v1" and "level0_width" not in f["coords"].attrs
    sf = read_slide("trident", "slideA", path, ReadOptions())
    assert sf.extractor == "uni_v1"
    assert (sf.geometry.mpp0, sf.geometry.mpp_source) == (0.25, "magnification")
    given = read_slide("trident", "slideA", path, ReadOptions(mpp=0.2634))
    assert (given.geometry.mpp0, given.geometry.mpp_source) == (0.2634, None)


def test_trident_pt_array_and_older_tensor_files_load_with_weights_only(tmp_path):
    feats = np.arange(8, dtype=np.float32).reshape(2, 4)
    coords = np.array([[0, 0], [512, 0]])
    arr = write_trident(tmp_path / "a", "conch_v15", "s", feats, coords, saveas="pt")
    ten = write_trident(tmp_path / "b", "conch_v15", "s", feats, coords, saveas="pt", tensor=True)
    for path in (arr, ten):
        sf = read_slide("pt", "s", path, ReadOptions(coords_dir=path.parent.parent / "patches"))
        np.testing.assert_array_equal(sf.features, feats)
        np.testing.assert_array_equal(sf.coords, coords)
    import torch

    torch.save({"x": [1, 2]}, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="does not hold a features tensor or array"):
        read_slide("pt", "s", tmp_path / "bad.pt", ReadOptions(coords_dir=arr.parent.parent / "patches"))


def test_stamp_tile_size_names_and_a_missing_size(tmp_path):
    feats, coords_um = np.ones((2, 4), np.float16), np.array([[0.0, 0.0], [112.0, 0.0]])
    for version in ("2.0.0", "2.1.0"):
        path = write_stamp(tmp_path / version, "s", feats, coords_um, tile_size_um=112.0, version=version)
        with h5py.File(path) as f:
            assert ("tile_size" in f.attrs) == (version == "2.0.0") != ("tile_size_um" in f.attrs)
        sf = read_slide("stamp", "s", path, ReadOptions(mpp=0.5))
        assert (sf.geometry.size0, sf.geometry.out_size) == (224.0, 224)
        np.testing.assert_array_equal(sf.coords, [[0, 0], [224, 0]])
    with h5py.File(path, "a") as f:
        del f.attrs["tile_size_um"]
    with pytest.raises(InputError, match="unit 'um' but no tile_size_um") as exc:
        read_slide("stamp", "s", path, ReadOptions(mpp=0.5))
    assert "\n" not in exc.value.one_line()


def test_stamp_folders_of_several_extractors_are_refused(tmp_path):
    feats, coords_um = np.ones((2, 4), np.float16), np.array([[0.0, 0.0], [112.0, 0.0]])
    write_stamp(tmp_path, "s1", feats, coords_um, extractor="virchow2")
    write_stamp(tmp_path, "s2", feats, coords_um, extractor="ctranspath")
    with pytest.raises(InputError, match=r"2 extractors.*ctranspath.*virchow2") as exc:
        LAYOUTS["stamp"].find(tmp_path)
    assert "pass the extractor's folder" in exc.value.one_line() and "\n" not in exc.value.one_line()
    assert [s for s, _ in LAYOUTS["stamp"].find(tmp_path / "virchow2")] == ["s1"]
    nested = tmp_path / "virchow2" / "batch2"  # STAMP mirrors the slide tree inside the extractor folder
    write_stamp(nested, "s3", feats, coords_um, extractor="virchow2")
    assert sorted(s for s, _ in LAYOUTS["stamp"].find(tmp_path / "virchow2")) == ["s1", "s3"]


def test_trident_job_folder_with_one_features_folder_is_found(tmp_path):
    feats, coords = np.ones((2, 4), np.float32), np.array([[0, 0], [512, 0]])
    write_trident(tmp_path, "conch_v1", "slideA", feats, coords)
    assert [s for s, _ in LAYOUTS["trident"].find(tmp_path)] == ["slideA"]
    write_trident(tmp_path, "uni_v1", "slideA", feats, coords)
    with pytest.raises(InputError, match="several TRIDENT feature folders"):
        LAYOUTS["trident"].find(tmp_path)


def test_stamp_v1_coordinates_and_augmented_rows(tmp_path):
    feats = np.arange(12, dtype=np.float16).reshape(3, 4)
    coords_um = np.array([[0.0, 0.0], [256.0, 0.0], [0.0, 512.0]])
    path = write_stamp(tmp_path, "s1", feats, coords_um, v1=True)
    with h5py.File(path, "a") as f:  # STAMP v1 appended augmented copies after the clean rows
        del f["augmented"]
        f["augmented"] = np.array([False, False, True])
    sf = read_slide("stamp", "s1", path, ReadOptions(mpp=0.5))
    assert len(sf.features) == 2
    np.testing.assert_array_equal(sf.coords, [[0, 0], [512, 0]])  # 256 µm / 0.5 µm/px
    assert sf.extractor.startswith("STAMP-extract")
    with pytest.raises(InputError, match="µm/px"):
        read_slide("stamp", "s1", path, ReadOptions())


def _h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f[k] = v
        if "coords" in datasets:
            for k, v in trident_coords_attrs("x").items():
                f["coords"].attrs[k] = v
    return path


F4, C2 = np.ones((3, 4), np.float32), np.zeros((2, 2))


@pytest.mark.parametrize(("datasets", "message"), [
    ({"features": F4, "coords": C2}, "3 feature rows but 2 coordinates"),
    ({"features": np.full((2, 4), np.nan, np.float32), "coords": np.zeros((2, 2))}, "8 NaN/inf"),
    ({"features": np.ones((2, 4, 1), np.float32), "coords": np.zeros((2, 2))}, "expected \\(patches, dim\\)"),
    ({"feats": np.ones((2, 4), np.float32), "coords": np.zeros((2, 2))}, "no 'features' dataset"),
    ({"features": np.ones((0, 4), np.float32), "coords": np.zeros((0, 2))}, "holds no patches"),
])
def test_malformed_files_are_one_line_input_errors(tmp_path, datasets, message):
    path = _h5(tmp_path / "bad.h5", **datasets)
    with pytest.raises(InputError, match=message) as exc:
        read_slide("trident", "bad", path, ReadOptions())
    assert "\n" not in exc.value.one_line() and str(path) in exc.value.one_line()


def test_a_file_that_is_not_hdf5_is_an_input_error(tmp_path):
    path = tmp_path / "x.h5"
    path.write_text("not hdf5")
    with pytest.raises(InputError, match="not a readable HDF5"):
        read_slide("clam", "x", path, ReadOptions())


def test_unknown_layout_names_the_choices():
    with pytest.raises(InputError, match="clam, trident, stamp, pt"):
        h5features.get_layout("hest")
