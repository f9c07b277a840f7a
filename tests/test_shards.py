"""Direct shard reads of the patch store agree with zarr-python, and refuse what they cannot read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from brcatool import stores
from brcatool.artifacts import Workdir
from brcatool.errors import ArtifactError
from brcatool.shards import ShardedPatches, ShardError
from brcatool.synth.patches import he_patches


@pytest.fixture()
def store(tmp_path: Path) -> tuple[Workdir, np.ndarray]:
    wd = Workdir(tmp_path / "wd")
    n = 2 * stores.PATCH_SHARD + 9  # two full shards and a partial one
    patches = he_patches(n, 16, np.random.default_rng(0))
    stores.write_patches(wd, "slide-a", patches)
    return wd, patches


def test_reads_equal_zarr_for_every_kind_of_range(store) -> None:
    wd, patches = store
    fast = ShardedPatches.open(wd.patches_zarr / "slide-a")
    assert fast is not None and fast.shape == patches.shape and fast.per_shard == stores.PATCH_SHARD
    arr = stores.read_patches(wd, "slide-a")
    n, k = len(patches), stores.PATCH_SHARD
    ranges = [(0, n), (0, 1), (n - 1, n), (k - 1, k + 1), (3, 2 * k + 4), (k, 2 * k), (5, 5)]
    ranges += [tuple(sorted(np.random.default_rng(i).integers(0, n + 1, 2).tolist())) for i in range(20)]
    for a, b in ranges:
        out = np.empty((b - a, 16, 16, 3), np.uint8)
        fast.read_into(a, b, out)
        assert np.array_equal(out, np.asarray(arr[a:b])), (a, b)
        assert np.array_equal(out, patches[a:b]), (a, b)


def test_out_of_range_and_wrong_buffers_are_refused(store) -> None:
    wd, patches = store
    fast = ShardedPatches.open(wd.patches_zarr / "slide-a")
    with pytest.raises(IndexError):
        fast.read_into(0, len(patches) + 1, np.empty((len(patches) + 1, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="C-contiguous uint8"):
        fast.read_into(0, 2, np.empty((2, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match="C-contiguous uint8"):
        fast.read_into(0, 2, np.empty((2, 16, 16, 6), np.uint8)[..., :3])


def test_other_layouts_fall_back_to_zarr(tmp_path: Path, store) -> None:
    import zarr

    wd, patches = store
    plain = zarr.create_array(store=str(tmp_path / "plain"), shape=patches.shape, dtype=np.uint8,
                              chunks=(4, 16, 16, 3), zarr_format=3)  # no sharding
    plain[:] = patches
    assert ShardedPatches.open(tmp_path / "plain") is None
    assert ShardedPatches.open(tmp_path / "nothing-here") is None
    meta_path = wd.patches_zarr / "slide-a" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["codecs"][0]["configuration"]["codecs"][1]["name"] = "zstd"  # another chunk codec
    meta_path.write_text(json.dumps(meta))
    assert ShardedPatches.open(wd.patches_zarr / "slide-a") is None


def test_damaged_shards_are_errors_and_one_line_through_the_reader(store) -> None:
    wd, patches = store
    arr_dir = wd.patches_zarr / "slide-a"
    shard = arr_dir / "c" / "1" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0x10  # a flipped bit in the index: its CRC32C no longer matches
    shard.write_bytes(bytes(data))
    fast = ShardedPatches.open(arr_dir)
    out = np.empty((4, 16, 16, 3), np.uint8)
    fast.read_into(0, 4, out)  # shard 0 is intact
    with pytest.raises(ShardError, match="CRC32C"):
        fast.read_into(stores.PATCH_SHARD, stores.PATCH_SHARD + 4, out)
    shard.write_bytes(bytes(data[:100]))  # cut short
    with pytest.raises(ShardError, match="shorter than its index"):
        fast.read_into(stores.PATCH_SHARD, stores.PATCH_SHARD + 4, out)
    shard.unlink()
    with pytest.raises(ShardError, match="missing"):
        fast.read_into(stores.PATCH_SHARD, stores.PATCH_SHARD + 4, out)
    reader = stores.PatchReader(wd, "slide-a")
    assert reader.fast is not None
    with pytest.raises(ArtifactError) as err:
        reader.read_into(stores.PATCH_SHARD, stores.PATCH_SHARD + 4, out)
    line = err.value.one_line()
    assert "slide-a" in line and "re-run `brcatool tile`" in line and "\n" not in line


def _rewrite_index(shard: Path, per_shard: int, edit) -> None:
    """Apply ``edit`` to a shard's (per_shard, 2) index and store it back with a valid CRC32C."""
    import google_crc32c

    data = bytearray(shard.read_bytes())
    index = np.frombuffer(bytes(data[-(16 * per_shard + 4):-4]), "<u8").reshape(per_shard, 2).copy()
    edit(index)
    raw = index.tobytes()
    data[-(16 * per_shard + 4):] = raw + google_crc32c.value(raw).to_bytes(4, "little")
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("entry", [(2**64 - 10, 20), (10, 2**64 - 5), (2**64 - 1, 100), (0, 10**9)])
def test_index_entries_outside_the_file_are_shard_errors(store, entry) -> None:
    """Offsets or lengths past the data (wrapping ones, or only the offset marked absent) are
    ShardErrors, never wrong pixels or an IndexError."""
    wd, _ = store
    k = stores.PATCH_SHARD
    shard = wd.patches_zarr / "slide-a" / "c" / "0" / "0" / "0" / "0"

    def edit(index: np.ndarray) -> None:
        index[1] = entry

    _rewrite_index(shard, k, edit)
    with pytest.raises(ShardError, match="points past the data"):
        ShardedPatches.open(wd.patches_zarr / "slide-a").read_into(0, 3, np.empty((3, 16, 16, 3), np.uint8))


def test_absent_chunks_read_as_the_fill_value(store) -> None:
    """A chunk the index marks absent (offset = nbytes = 2**64-1) reads as zeros, as in zarr."""
    wd, patches = store
    shard = wd.patches_zarr / "slide-a" / "c" / "0" / "0" / "0" / "0"

    def edit(index: np.ndarray) -> None:
        index[2] = 2**64 - 1

    _rewrite_index(shard, stores.PATCH_SHARD, edit)
    out = np.empty((4, 16, 16, 3), np.uint8)
    ShardedPatches.open(wd.patches_zarr / "slide-a").read_into(0, 4, out)
    assert not out[2].any() and np.array_equal(out[[0, 1, 3]], patches[[0, 1, 3]])
    assert np.array_equal(out, np.asarray(stores.read_patches(wd, "slide-a")[0:4]))


def _files(array_dir: Path) -> dict[str, bytes]:
    files = sorted(p for p in array_dir.rglob("*") if p.is_file())
    return {str(p.relative_to(array_dir)): p.read_bytes() for p in files}


def _zarr_reference(path: Path, n: int, size: int, attributes: dict):
    """The patch array as zarr-python itself creates it with the store's settings."""
    import zarr
    from zarr.codecs import BloscCodec

    return zarr.create_array(
        store=str(path), shape=(n, size, size, 3), dtype=np.uint8, chunks=(1, size, size, 3),
        shards=(max(1, min(n, stores.PATCH_SHARD)), size, size, 3),
        compressors=BloscCodec(**stores.PATCH_BLOSC), attributes=attributes, zarr_format=3,
        overwrite=True, config={"write_empty_chunks": True})


@pytest.mark.parametrize("attributes", [
    {"slide_id": "TCGA-A1-A0SB-01Z-00-DX1.B34C68B8-F7A0-4B5E-9B2A-1C1C2C3D4E5F", "patient_id": "TCGA-A1-A0SB",
     "mpp": 0.5032, "size": 256, "level": 0, stores.ID_ATTR: "x"},
    {"slide_id": "Präparat β/1 \"quoted\"", "mpp": 1e-7, "nested": {"a": [1, 2.5, None, True]},
     stores.ID_ATTR: "y"},
    {}])
@pytest.mark.parametrize(("n", "size"), [(0, 8), (1, 224), (35, 256), (200, 512)])
def test_zarr_json_written_directly_equals_zarr_pythons(tmp_path: Path, attributes: dict, n: int,
                                                        size: int) -> None:
    from brcatool.shards import create_patch_array

    per_shard = max(1, min(n, stores.PATCH_SHARD))
    ours = create_patch_array(tmp_path / "ours", n, size, per_shard, stores.PATCH_BLOSC, attributes)
    _zarr_reference(tmp_path / "zarr", n, size, attributes)
    assert (tmp_path / "ours" / "zarr.json").read_bytes() == (tmp_path / "zarr" / "zarr.json").read_bytes()
    assert ours.shape == (n, size, size, 3) and ours.per_shard == per_shard
    assert ShardedPatches.open(tmp_path / "zarr") == ours.__class__(tmp_path / "zarr", ours.shape, per_shard,
                                                                    stores.PATCH_BLOSC)


@pytest.mark.parametrize("n", [3, 35, stores.PATCH_SHARD, stores.PATCH_SHARD + 6, 2 * stores.PATCH_SHARD + 2])
def test_shards_written_directly_are_byte_identical_to_zarr(tmp_path: Path, n: int) -> None:
    """Shard-aligned batches take the direct path; zarr-python writes the references, in batches
    of 2 (its partial-shard encoder) and in one assignment (its whole-shard encoder). An all-zero
    patch (the fill value) is stored like any other. Same files, byte for byte."""
    patches = he_patches(n, 16, np.random.default_rng(n))
    patches[n // 2] = 0
    direct, pairs, whole = (Workdir(tmp_path / name) for name in ("direct", "pairs", "whole"))
    stores.write_patch_batches(direct, "s", n, 16, (patches[i:i + stores.PATCH_SHARD]
                                                   for i in range(0, n, stores.PATCH_SHARD)))
    stores.write_patch_batches(pairs, "s", n, 16, (patches[i:i + 2] for i in range(0, n, 2)))
    arr = _zarr_reference(whole.patches_zarr / "s", n, 16, {stores.ID_ATTR: "s"})
    arr[...] = patches  # zarr-python alone, the whole array at once
    a = _files(direct.patches_zarr / "s")
    assert len([k for k in a if k.startswith("c")]) == -(-n // stores.PATCH_SHARD)
    assert a == _files(pairs.patches_zarr / "s")
    assert a == _files(whole.patches_zarr / "s")  # zarr.json included: tile writes it without zarr
    assert np.array_equal(np.asarray(stores.read_patches(direct, "s")[:]), patches)


def test_write_shard_refuses_what_does_not_fill_the_shard(store) -> None:
    wd, patches = store
    fast = ShardedPatches.open(wd.patches_zarr / "slide-a")
    with pytest.raises(ValueError, match="holds"):
        fast.write_shard(0, patches[:3])  # a full shard holds PATCH_SHARD patches
    with pytest.raises(ValueError, match="holds"):
        fast.write_shard(9, patches[:1])  # past the end
    with pytest.raises(ValueError, match="holds"):
        fast.write_shard(2, patches[-9:].astype(np.float32))


def test_a_forked_child_encodes_with_its_own_threads(tmp_path: Path) -> None:
    """The encoder threads do not survive fork: a child that inherits the parent's pool must make
    its own, not wait forever on a pool without threads."""
    import multiprocessing

    patches = he_patches(stores.PATCH_SHARD, 16, np.random.default_rng(1))
    stores.write_patches(Workdir(tmp_path / "parent"), "s", patches)  # the parent's pool exists now
    child = multiprocessing.get_context("fork").Process(
        target=stores.write_patches, args=(Workdir(tmp_path / "child"), "s", patches))
    child.start()
    child.join(60)
    assert child.exitcode == 0, "the forked child hung or failed writing a shard"
    parent, child_files = (_files(tmp_path / who / "patches.zarr" / "s") for who in ("parent", "child"))
    assert child_files == parent


def test_a_failed_read_leaves_no_temporary_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch iterator fails while the previous shard is still being written: the write must end
    before the array's temporary folder is removed (a late write would create it again: debris)."""
    import time

    real = ShardedPatches.write_shard

    def slow(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        time.sleep(0.3)
        return real(self, *a, **k)

    monkeypatch.setattr(ShardedPatches, "write_shard", slow)
    patches = he_patches(stores.PATCH_SHARD, 16, np.random.default_rng(0))

    def batches():  # noqa: ANN202
        yield patches  # one whole shard, written slowly in the writer thread
        raise OSError("the slide file vanished")

    wd = Workdir(tmp_path / "w")
    with pytest.raises(OSError, match="vanished"):
        stores.write_patch_batches(wd, "s", 2 * stores.PATCH_SHARD, 16, batches())
    time.sleep(0.5)  # (a write still running would land now)
    assert sorted(p.name for p in wd.patches_zarr.iterdir()) == ["zarr.json"]
