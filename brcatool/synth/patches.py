"""A tiled workdir without slides: H&E-like patches written straight into the patch store.

`embed` tests and its benchmark need ``patches.zarr`` + ``patches.parquet`` + ``slides.parquet``
but not the cost of rendering and tiling whole slides, so this writes exactly what ``tile``
would leave behind, following the artifact contract.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brcatool.artifacts import Workdir

# Optical densities of haematoxylin (purple nuclei) and eosin (pink stroma), Ruifrok & Johnston.
_H = np.array([0.65, 0.70, 0.29])
_E = np.array([0.07, 0.99, 0.11])


def he_patches(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uint8 (size, size, 3) patches: eosin background with haematoxylin blobs and noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        h = np.zeros((size, size), np.float32)
        for _ in range(int(rng.integers(3, 12))):
            cy, cx = rng.uniform(0, size, 2)
            r = rng.uniform(size / 24, size / 8)
            h += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)) * rng.uniform(0.6, 1.4)
        e = 0.3 + 0.3 * rng.random() + 0.1 * rng.standard_normal((size, size)).astype(np.float32)
        od = h[..., None] * _H + np.clip(e, 0, None)[..., None] * _E
        rgb = 255.0 * np.exp(-od) + rng.normal(0, 3, (size, size, 3))
        out[i] = np.clip(rgb, 0, 255).astype(np.uint8)
    return out


def make_patch_workdir(workdir: str | Path | Workdir, *, slides: int = 3, patches: int | list[int] = 4,
                       size: int = 64, seed: int = 0, unique: int | None = None) -> Workdir:
    """Write slides.parquet, patches.parquet and patches.zarr for ``slides`` fake slides.

    ``patches`` is the count per slide (an int, or one int per slide). Slide and patient ids
    look like TCGA's; patches are deterministic in ``seed``. ``unique`` draws only that many
    patches and cycles them (big benchmark stores in seconds, same bytes per patch).
    """
    import pyarrow as pa

    from brcatool import tiling
    from brcatool.artifacts import write_parquet
    from brcatool.stores import write_patches

    wd = workdir if isinstance(workdir, Workdir) else Workdir(Path(workdir))
    rng = np.random.default_rng(seed)
    counts = [patches] * slides if isinstance(patches, int) else list(patches)
    slide_rows, patch_rows = [], []
    pool: np.ndarray | None = None
    for s, n in enumerate(counts):
        patient = f"TCGA-XX-{s:04d}"
        slide_id = f"{patient}-01Z-00-DX1.{seed:08X}-0000-4000-8000-{s:012X}"
        if n and unique:
            pool = he_patches(unique, size, rng) if pool is None else pool
            write_patches(wd, slide_id, pool[(np.arange(n) + s * 7) % unique])
        elif n:
            write_patches(wd, slide_id, he_patches(n, size, rng))
        slide_rows.append({
            "slide_id": slide_id, "patient_id": patient, "path": f"slides/{slide_id}.tiff",
            "status": "ok" if n else "no_tissue", "error": None, "width": size * 16,
            "height": size * 16, "mpp": 0.5, "n_candidates": n, "n_patches": n, "seconds": 0.0,
        })
        for i in range(n):
            patch_rows.append({
                "slide_id": slide_id, "patient_id": patient, "patch_index": i,
                "x": (i % 16) * size, "y": (i // 16) * size, "level": 0, "mpp": 0.5,
                "size": size, "tissue_fraction": float(rng.uniform(0.5, 1.0)),
            })
    write_parquet(pa.Table.from_pylist(slide_rows, schema=tiling.arrow_schema(tiling.SLIDE_COLUMNS)),
                  wd.slides_table, schema="slides")
    write_parquet(pa.Table.from_pylist(patch_rows, schema=tiling.arrow_schema(tiling.PATCH_COLUMNS)),
                  wd.patches_table, schema="patches")
    return wd
