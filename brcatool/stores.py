"""The two Zarr stores every image stage shares: patches (from ``tile``) and features (from ``embed``).

Layouts (Zarr v3, one array per slide, named by ``slide_id``; each array written atomically):

- ``patches.zarr/<slide_id>``: uint8 ``(n_patches, size, size, 3)``, one patch per chunk, sharded,
  row ``i`` = ``patches.parquet`` row with ``patch_index == i`` for that slide.
- ``features/<encoder>/features.zarr/<slide_id>``: float16 ``(views, n_patches, dim)``; view 0 is
  the clean (unaugmented) pass, patch order as in the patch store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from brcatool import artifacts
from brcatool.artifacts import Workdir

PATCH_SHARD = 64  # patches per shard file: few files, still cheap partial reads


def write_patches(workdir: Workdir, slide_id: str, patches: np.ndarray,
                  attrs: dict[str, Any] | None = None) -> Path:
    if patches.dtype != np.uint8 or patches.ndim != 4 or patches.shape[-1] != 3:
        raise ValueError(f"patches must be uint8 (n, s, s, 3), got {patches.dtype} {patches.shape}")
    artifacts.open_group(workdir.patches_zarr, schema="patch-store", create=True)
    n, h, w, _ = patches.shape
    chunks = (1, h, w, 3)
    shards = (max(1, min(n, PATCH_SHARD)), h, w, 3)
    return artifacts.write_array(workdir.patches_zarr, slide_id, patches, chunks=chunks,
                                 shards=shards, attrs=attrs)


def read_patches(workdir: Workdir, slide_id: str):
    """The slide's patch array (lazy Zarr array; index it to read)."""
    group = artifacts.open_group(workdir.patches_zarr, schema="patch-store")
    return group[slide_id]


def patch_slides(workdir: Workdir) -> list[str]:
    return artifacts.array_names(workdir.patches_zarr)


def write_features(workdir: Workdir, encoder: str, slide_id: str, features: np.ndarray,
                   attrs: dict[str, Any] | None = None) -> Path:
    if features.ndim != 3:
        raise ValueError(f"features must be (views, n, dim), got {features.shape}")
    features = features.astype(np.float16, copy=False)
    artifacts.open_group(workdir.features_zarr(encoder), schema="feature-store", create=True)
    v, n, d = features.shape
    return artifacts.write_array(workdir.features_zarr(encoder), slide_id, features,
                                 chunks=(v, max(1, n), d), attrs=attrs)


def read_features(workdir: Workdir, encoder: str, slide_id: str) -> np.ndarray:
    group = artifacts.open_group(workdir.features_zarr(encoder), schema="feature-store")
    return np.asarray(group[slide_id][...])


def feature_slides(workdir: Workdir, encoder: str) -> list[str]:
    return artifacts.array_names(workdir.features_zarr(encoder))
