"""Per-patch weights drawn for a reader: top-k patch montages and slide heatmaps.

Takes a tidy weight table (patient_id, slide_id, patch_index, weight), whatever produced the
weights (attention today); reads patch images and slide thumbnails from the workdir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from brcatool import artifacts
from brcatool.artifacts import Workdir
from brcatool.errors import ArtifactError
from brcatool.names import file_name


def draw(wd: Workdir, weights: Any, out_dir: Path, *, top_k: int, heatmaps: bool, notes: list[str],
         progress: bool) -> tuple[int, int]:
    """(montages, heatmaps) written under ``out_dir/topk`` and ``out_dir/heatmaps``; gaps go to notes."""
    montages = maps = 0
    if top_k > 0:
        if wd.patches_zarr.exists():
            montages = _montages(wd, weights, out_dir / "topk", top_k, progress)
        else:
            notes.append(f"no top-k montages: {wd.patches_zarr} does not exist (no patch images)")
    if heatmaps:
        maps = _heatmaps(wd, weights, out_dir / "heatmaps", notes, progress)
    return montages, maps


def _bar(progress: bool) -> Any:
    from rich.progress import Progress

    return Progress(transient=True, disable=not progress)


def _montages(wd: Workdir, att: Any, out: Path, k: int, progress: bool) -> int:
    import polars as pl

    from brcatool import plots, stores

    top = att.sort("weight", descending=True).group_by("patient_id", maintain_order=True).head(k)
    stores_cache: dict[str, Any] = {}
    written = 0
    groups = sorted(top.group_by("patient_id"), key=lambda g: g[0])
    slides = {str(pid): sorted(ids) for pid, ids in
              att.group_by("patient_id").agg(pl.col("slide_id").unique()).iter_rows()}
    with _bar(progress) as bar:
        task = bar.add_task("top-k montages", total=len(groups))
        for (pid,), part in groups:
            images, labels = [], []
            slides_of = slides[str(pid)]
            for sid, pidx, w in part.sort("weight", descending=True).select(
                    "slide_id", "patch_index", "weight").iter_rows():
                try:
                    if sid not in stores_cache:
                        stores_cache[sid] = stores.read_patches(wd, sid)
                    arr = stores_cache[sid]
                    images.append(np.asarray(arr[int(pidx)]))
                    where = f"s{slides_of.index(sid) + 1} " if len(slides_of) > 1 else ""
                    labels.append(f"{where}#{pidx} w={w:.3f}")
                except (KeyError, FileNotFoundError, ArtifactError, IndexError):
                    continue
            if images:
                plots.montage(images, labels, out / f"{file_name(pid)}.png")
                written += 1
            bar.advance(task)
    return written


def _heatmaps(wd: Workdir, att: Any, out: Path, notes: list[str], progress: bool) -> int:
    """Patch weights on the openslide thumbnail (else the tile stage's QC image) of each slide."""
    if not wd.slides_table.is_file() or not wd.patches_table.is_file():
        notes.append("no heatmaps: slides.parquet/patches.parquet missing (run `brcatool tile`)")
        return 0
    slides_t = artifacts.read_parquet(wd.slides_table, schema="slides")
    patches_t = artifacts.read_parquet(wd.patches_table, schema="patches")
    joined = att.join(patches_t.select("slide_id", "patch_index", "x", "y", "size", "mpp"),
                      on=["slide_id", "patch_index"], how="inner")
    meta = {r["slide_id"]: r for r in slides_t.iter_rows(named=True)}
    written, missing = 0, 0
    groups = sorted(joined.group_by("slide_id"), key=lambda g: g[0])
    with _bar(progress) as bar:
        task = bar.add_task("heatmaps", total=len(groups))
        for (sid,), part in groups:
            bar.advance(task)
            row = meta.get(sid)
            thumb, ds = _thumbnail(wd, sid, row) if row else (None, 1.0)
            if thumb is None:
                missing += 1
                continue
            mpp0 = float(row.get("mpp") or 0.0) or float(part["mpp"][0])
            size0 = part["size"].to_numpy() * part["mpp"].to_numpy() / mpp0
            xy = part.select("x", "y").to_numpy() / ds
            boxes = np.column_stack([xy, size0 / ds, size0 / ds])
            from brcatool import plots

            plots.heatmap(thumb, boxes, part["weight"].to_numpy(), out / f"{file_name(sid)}.png",
                          title=f"{sid} ({part['patient_id'][0]})")
            written += 1
    if missing:
        notes.append(f"no heatmap for {missing} slide(s): neither the slide file nor a QC thumbnail "
                     "could be read")
    return written


def _thumbnail(wd: Workdir, sid: str, row: dict[str, Any]) -> tuple[np.ndarray | None, float]:
    """(RGB thumbnail, level-0 px per thumbnail px) from the slide, else the QC PNG, else None."""
    from brcatool.errors import BrcaError

    path = Path(str(row.get("path") or ""))
    if row.get("path") and not path.is_absolute():
        path = wd.root / path
    if row.get("path") and path.exists():
        from brcatool import slides

        try:
            slide = slides.open_slide(path)
            try:
                return slides.read_thumbnail(slide, max_side=1024)
            finally:
                slide.close()
        except BrcaError:
            pass
    qc = wd.qc_image(sid)
    if qc.is_file() and row.get("width"):
        import cv2

        img = cv2.imread(str(qc), cv2.IMREAD_COLOR)
        if img is not None:
            return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), float(row["width"]) / img.shape[1]
    return None, 1.0
