"""Benchmark `brcatool tile` on one large synthetic slide, next to raw openslide reads.

Makes (once, cached under bench-work/tile/) a 20,480 x 20,480 px pyramidal JPEG TIFF with the
synth factory (rendered band by band, so memory stays small), then times
1. tile with --patches 35 (target: under 1 s per slide),
2. tile with --sampling all (target: >= 0.8 x the raw read rate),
3. raw ``openslide.read_region`` of the very same patch coordinates (the limit).

Usage: python benchmarks/bench_tile.py [--size 20480] [--workdir bench-work/tile]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np


def make_slide(root: Path, size: int) -> Path:
    from brcatool.artifacts import atomic_path
    from brcatool.synth.slides import SlideSpec, write_slide

    path = root / f"TCGA-BE-NCH{size % 10}-01Z-00-DX1.{size}.tiff"
    if not path.exists():
        t0 = time.perf_counter()
        with atomic_path(path) as tmp:
            write_slide(tmp, SlideSpec(width=size, height=size, subtype="LumB", seed=(2024,)))
        print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s")
    return path


def tile_once(slide: Path, work: Path, **options) -> tuple[float, int, Path]:
    from brcatool.tiling import TileConfig, run_tile

    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    result = run_tile(work, TileConfig(slides=[str(slide)], **options), progress=False)
    seconds = time.perf_counter() - t0
    if result.count("ok") != 1:
        raise SystemExit(f"tile failed: {result.rows}")
    return seconds, result.n_patches, result.patches_table


def raw_reads(slide: Path, patches_table: Path) -> tuple[float, int]:
    import openslide
    import polars as pl

    df = pl.read_parquet(patches_table)
    s = openslide.OpenSlide(str(slide))
    size = int(df["size"][0])
    t0 = time.perf_counter()
    for x, y, level in df.select("x", "y", "level").iter_rows():
        np.asarray(s.read_region((x, y), level, (size, size)))
    seconds = time.perf_counter() - t0
    s.close()
    return seconds, df.height


def warm_imports() -> None:
    """Import what the stage imports lazily, so the timings are of the work, not of imports."""
    import importlib

    for name in ("cv2", "openslide", "polars", "pyarrow.compute", "pyarrow.parquet", "rich.progress",
                 "zarr", "zarr.codecs", "brcatool.config", "brcatool.stores", "brcatool.tiling"):
        importlib.import_module(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=20480, help="slide side in px (>= 20000)")
    ap.add_argument("--workdir", type=Path, default=Path("bench-work/tile"))
    args = ap.parse_args()
    slide = make_slide(args.workdir / "slides", args.size)
    warm_imports()

    t35, n35, table35 = tile_once(slide, args.workdir / "w35", patches=35)
    tall, nall, table_all = tile_once(slide, args.workdir / "wall", sampling="all")
    r35, _ = raw_reads(slide, table35)
    rall, _ = raw_reads(slide, table_all)

    print(f"\nslide {args.size} x {args.size} px, mpp 0.5, 256 px patches at 0.5 µm/px (level 0)")
    print(f"{'run':<22}{'patches':>9}{'seconds':>10}{'slides/s':>10}{'patches/s':>11}")
    for name, n, sec in (("tile --patches 35", n35, t35), ("raw read_region (35)", n35, r35),
                         ("tile --sampling all", nall, tall), ("raw read_region (all)", nall, rall)):
        print(f"{name:<22}{n:>9}{sec:>10.2f}{1 / sec:>10.3f}{n / sec:>11.0f}")
    ratio = (nall / tall) / (nall / rall)
    print(f"\ntile all / raw read rate: {ratio:.2f} (target >= 0.8)")
    print(f"tile --patches 35: {t35:.2f} s per slide (target < 1 s)")


if __name__ == "__main__":
    main()
