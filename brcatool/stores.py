"""The two Zarr stores every image stage shares: patches (from ``tile``) and features (from ``embed``).

Layouts (Zarr v3, one array per slide, named by ``names.file_name(slide_id)`` (the id itself when
it is a plain name, see ``brcatool.names``) and stamped with the id; each array written atomically):

- ``patches.zarr/<slide_id>``: uint8 ``(n_patches, size, size, 3)``, one patch per chunk, sharded,
  row ``i`` = ``patches.parquet`` row with ``patch_index == i`` for that slide.
- ``features/<encoder>/features.zarr/<slide_id>``: float16 ``(views, n_patches, dim)``; view 0 is
  the clean (unaugmented) pass, patch order as in the patch store.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from brcatool import artifacts, zarr_io
from brcatool.artifacts import Workdir
from brcatool.errors import ArtifactError
from brcatool.names import file_name
from brcatool.shards import ShardedPatches, ShardError, create_patch_array

ID_ATTR = "brcatool.id"  # the slide id an array holds (its name may be a mapped one)

PATCH_SHARD = 64  # patches per shard file: few files, still cheap partial reads


#: Blosc LZ4, level 5, no shuffle (uint8): on H&E patches ~0.5 ms/patch to encode and ~0.2 ms to
#: decode, vs ~2.2 / 0.7 ms for zstd level 1, for ~0.84 vs ~0.66 of raw size. Tiling then runs at
#: about raw-read speed; any Zarr v3 reader decodes it (blosc is standard). Written out in full, as
#: zarr-python writes it.
PATCH_BLOSC = {"typesize": 1, "cname": "lz4", "clevel": 5, "shuffle": "noshuffle", "blocksize": 0}


def _feature_codec() -> Any:
    """Zstd with its frame checksum: a flipped bit in a feature chunk fails the read (one line via
    ``member``) instead of feeding wrong numbers to training; any Zarr v3 reader decodes it."""
    from zarr.codecs import ZstdCodec

    return ZstdCodec(level=0, checksum=True)


def write_patch_batches(workdir: Workdir, slide_id: str, n: int, size: int,
                        batches: Iterable[np.ndarray], attrs: dict[str, Any] | None = None) -> Path:
    """Write one slide's patches from an iterator of batches, atomically, one shard in memory.

    A shard is compressed and written in a thread while the caller reads the next batch (both
    release the GIL), so tiling overlaps slide reads with store writes. The array's zarr.json and
    every batch that is one whole shard are written directly (``shards``: no zarr-python import, the
    same bytes); other batches go through zarr-python.
    """
    zarr_io.ensure_group(workdir.patches_zarr, schema="patch-store")
    with ThreadPoolExecutor(1) as writer, \
            artifacts.atomic_path(workdir.patches_zarr / file_name(slide_id)) as tmp:
        fast = create_patch_array(tmp, n, size, max(1, min(n, PATCH_SHARD)), PATCH_BLOSC,
                                  {**(attrs or {}), ID_ATTR: slide_id})
        arr = None
        pending = None
        start = 0
        try:
            for batch in batches:
                if pending is not None:
                    pending.result()
                if start % fast.per_shard == 0 and len(batch) == min(fast.per_shard, n - start):
                    pending = writer.submit(fast.write_shard, start // fast.per_shard, batch)  # a whole shard
                else:
                    arr = arr if arr is not None else _zarr_array(tmp)
                    pending = writer.submit(_write_batch, arr, start, batch)
                start += len(batch)
        finally:  # a failed read must not leave a write running into the folder atomic_path removes
            if pending is not None:
                wait([pending])
        if pending is not None:
            pending.result()
        if start != n:
            raise ValueError(f"{slide_id}: got {start} patches, expected {n}")
    return workdir.patches_zarr / file_name(slide_id)


def _zarr_array(path: Path) -> Any:
    import zarr

    # no per-patch "equals the fill value?" scan (zarr's array_equal cost as much CPU as the
    # slide read itself); a patch is never all zeros (reads are composited onto white)
    with zarr.config.set({"array.write_empty_chunks": True}):
        return zarr.open_array(str(path), mode="r+", zarr_format=3)


def _write_batch(arr: Any, start: int, batch: np.ndarray) -> None:
    import zarr

    with zarr.config.set({"codec_pipeline.batch_size": PATCH_SHARD}):
        arr[start:start + len(batch)] = batch


def write_patches(workdir: Workdir, slide_id: str, patches: np.ndarray,
                  attrs: dict[str, Any] | None = None) -> Path:
    """Write an in-memory patch array (tests, synthetic stores); see ``write_patch_batches``."""
    if patches.dtype != np.uint8 or patches.ndim != 4 or patches.shape[-1] != 3:
        raise ValueError(f"patches must be uint8 (n, s, s, 3), got {patches.dtype} {patches.shape}")
    n, size = patches.shape[0], patches.shape[1]
    batches = (patches[i:i + PATCH_SHARD] for i in range(0, n, PATCH_SHARD))
    return write_patch_batches(workdir, slide_id, n, size, batches, attrs)


def read_patches(workdir: Workdir, slide_id: str):
    """The slide's patch array (lazy Zarr array; index it to read)."""
    group = zarr_io.open_group(workdir.patches_zarr, schema="patch-store")
    return member(group, slide_id)


def member(group: Any, slide_id: str) -> Any:
    """The array of ``slide_id`` in an open patch or feature store (KeyError when absent).

    Reading it (``arr[...]``) turns a corrupt or missing chunk into one ArtifactError naming the
    array and the stage to re-run, instead of a codec's traceback.
    """
    return _Checked(group[file_name(slide_id)], slide_id)


class _Checked:
    """A Zarr array whose reads fail with one line naming the array (see ``member``)."""

    def __init__(self, arr: Any, slide_id: str) -> None:
        self._arr, self._slide_id = arr, slide_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._arr, name)

    def __getitem__(self, sel: Any) -> Any:
        try:
            return self._arr[sel]
        except (IndexError, TypeError):
            raise
        except Exception as exc:  # noqa: BLE001 - codecs and stores raise many kinds
            where = str(getattr(self._arr, "store_path", "") or self._slide_id).removeprefix("file://")
            raise _unreadable(where, self._slide_id, exc) from None


def _unreadable(where: str, slide_id: str, exc: BaseException) -> ArtifactError:
    """One line naming an array that cannot be read, and the stage that rewrites it."""
    feats = "features" in where.rsplit("/", 3)[0] if "/" in where else False
    return ArtifactError(
        f"cannot read slide {slide_id!r} ({type(exc).__name__}: "
        f"{' '.join(str(exc).split())[:160]}); the array is corrupt or incomplete",
        path=where, fix=("delete that folder and re-run `brcatool embed` (it redoes only "
                         "missing slides)" if feats else "delete that folder and re-run "
                         "`brcatool tile` (it redoes only missing slides)"))


class PatchReader:
    """One slide's patches read into a caller's buffer (embed's reader processes).

    Arrays with the store's own layout are read straight from their shard files
    (:mod:`brcatool.shards`, ~10x less CPU per patch than zarr-python's chunk-by-chunk path);
    any other array through zarr-python. Unreadable data fails with ``member``'s one line.
    """

    def __init__(self, workdir: Workdir, slide_id: str) -> None:
        self.slide_id = slide_id
        self.path = workdir.patches_zarr / file_name(slide_id)
        self.fast = ShardedPatches.open(self.path)
        self.zarr = read_patches(workdir, slide_id) if self.fast is None else None
        self.shape: tuple[int, ...] = self.fast.shape if self.fast is not None else tuple(self.zarr.shape)

    def read_into(self, a: int, b: int, out: np.ndarray) -> None:
        """Patches ``a:b`` into ``out`` (uint8, shape ``(b - a, s, s, 3)``, C-contiguous)."""
        if self.fast is None:
            out[...] = self.zarr[a:b]
            return
        try:
            self.fast.read_into(a, b, out)
        except (ShardError, OSError, RuntimeError) as exc:  # RuntimeError: blosc's decode error
            raise _unreadable(str(self.path), self.slide_id, exc) from None


def slide_ids(group_path: str | Path) -> list[str]:
    """Ids of the complete arrays of a store (read from each array's stamp when its name is mapped)."""
    import json

    out = []
    for name in zarr_io.array_names(group_path):
        sid = name
        if "~" in name:
            try:
                meta = json.loads((Path(group_path) / name / "zarr.json").read_text())
                sid = str(meta.get("attributes", {}).get(ID_ATTR, name))
            except (OSError, ValueError):
                continue
        out.append(sid)
    return sorted(out)


def patch_slides(workdir: Workdir) -> list[str]:
    return slide_ids(workdir.patches_zarr)


def write_features(workdir: Workdir, encoder: str, slide_id: str, features: np.ndarray,
                   attrs: dict[str, Any] | None = None) -> Path:
    if features.ndim != 3:
        raise ValueError(f"features must be (views, n, dim), got {features.shape}")
    features = features.astype(np.float16, copy=False)
    zarr_io.open_group(workdir.features_zarr(encoder), schema="feature-store", create=True)
    v, n, d = features.shape
    return zarr_io.write_array(workdir.features_zarr(encoder), file_name(slide_id), features,
                                 chunks=(v, max(1, n), d), attrs={**(attrs or {}), ID_ATTR: slide_id},
                                 compressors=_feature_codec())


def warm_up() -> None:
    """Import what writing features needs (a writer process runs this first)."""
    import zarr  # noqa: F401
    from zarr.codecs import ZstdCodec  # noqa: F401


def write_slide_features(workdir: Workdir, encoder: str, slide_id: str, features: np.ndarray,
                         attrs: dict[str, Any]) -> None:
    """embed's write of one slide: refuse non-finite values (one line), else ``write_features``.

    A plain module function of a light module, so a writer process can run it (see embed_unit)."""
    if not np.isfinite(features).all():
        raise ArtifactError(f"non-finite features for slide {slide_id}",
                            path=workdir.features_dir(encoder), fix="try --precision fp32")
    write_features(workdir, encoder, slide_id, features, attrs=attrs)


def feature_group(workdir: Workdir, encoder: str):
    """The encoder's feature store; open it once and read ``member(group, slide_id)`` per slide."""
    return zarr_io.open_group(workdir.features_zarr(encoder), schema="feature-store")


def read_features(workdir: Workdir, encoder: str, slide_id: str) -> np.ndarray:
    return np.asarray(member(feature_group(workdir, encoder), slide_id)[...])


def feature_slides(workdir: Workdir, encoder: str) -> list[str]:
    return slide_ids(workdir.features_zarr(encoder))
