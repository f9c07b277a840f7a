"""One slide's work in the tile stage: ``scan_slide`` (open, thumbnail, tissue mask, candidate
grid, QC base image and tissue GeoJSON in the QC thread) and ``extract_slide`` (read the chosen
patches into the patch store, their rows into a per-slide part). A slide stays open from its scan
to its extract (``close_slide``); a patient's slides share one openslide tile cache
(``tile_cache``). Any failure of one slide becomes its row (``failed_row``), never an exception.
``brcatool.tiling`` runs them per patient and merges the records.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from brcatool import slides, stores, threads
from brcatool.artifacts import Workdir, atomic_path
from brcatool.errors import BrcaError
from brcatool.interop import geojson as qupath_geojson
from brcatool.names import file_name
from brcatool.patchgrid import candidate_grid, tissue_mask
from brcatool.qc import QcWriter
from brcatool.tile_config import PATCH_COLUMNS, TileConfig, arrow_schema

READ_THREADS = 2  # patch-reading threads per slide (plus one writing the store)


def failed_row(entry: slides.SlideEntry, exc: BaseException, t0: float) -> dict[str, Any]:
    msg = (f"{exc.message} (fix: {exc.fix})" if exc.fix else exc.message) if isinstance(exc, BrcaError) \
        else f"{type(exc).__name__}: {exc}"  # the fix too: the CLI prints this column
    return {"slide_id": entry.slide_id, "status": "failed", "error": " ".join(msg.split())[:300],
            "width": None, "height": None, "mpp": None, "n_candidates": 0,
            "seconds": time.perf_counter() - t0}


def scan_slide(entry: slides.SlideEntry, cfg: TileConfig, qc_dir: Path, qc: QcWriter,
               cache: Any = None) -> dict[str, Any]:
    """Phase 1: mask and candidates of one slide (a failed row instead of an exception); the QC
    base image is drawn in ``qc``'s thread. The slide stays open in the result (``"slide"``, its
    tile cache ``cache`` when given: one for the patient's slides) until ``close_slide``."""
    t0 = time.perf_counter()
    slide = None
    try:
        slide = slides.open_slide(entry.path)
        if cache is not None:
            slide.set_cache(cache)
        w0, h0 = slide.dimensions
        mpp0 = slides.slide_mpp(slide, fallback=cfg.mpp_fallback, path=entry.path)
        plan = slides.plan_read(slide, mpp0, cfg.target_mpp, cfg.patch_size)
        thumb, ds = slides.read_thumbnail(slide, threads=READ_THREADS)
        mask = tissue_mask(thumb, method=cfg.tissue_method, min_area_px=cfg.min_area / (ds * mpp0) ** 2)
        stride0 = (cfg.stride or cfg.patch_size) * plan.size0 / cfg.patch_size
        xy, frac = candidate_grid(mask, (w0, h0), plan.size0, stride0, cfg.min_tissue)
        roi_status = roi_note = None
        if cfg.roi:  # QuPath regions of interest: keep candidates whose centre is inside (holes excluded)
            xy, frac, roi_status, roi_note = qupath_geojson.roi_filter(
                cfg.roi, cfg.roi_missing, entry.slide_id, xy, frac, plan.size0, cfg.roi_class)
    except BaseException as exc:  # any failure of one slide becomes its row (Ctrl-C etc. propagate)
        if slide is not None:
            slide.close()
        if not isinstance(exc, Exception):
            raise
        return failed_row(entry, exc, t0)
    try:
        base = qc.base(thumb, mask)  # kept in memory (768 px); boxes are drawn once patches are chosen
        qc.submit(qupath_geojson.write_tissue, qc_dir, entry.slide_id, mask, ds)  # outlines for QuPath
        if not len(xy):
            qc.write(qc_dir / f"{file_name(entry.slide_id)}.png", qc.encode(base))
    except BaseException:
        slide.close()
        raise
    status = "ok" if len(xy) else "no_tissue"
    error = None if len(xy) else (
        f"slide ({w0}x{h0} px) is smaller than one patch ({plan.size0:.0f} px)"
        if plan.size0 > min(w0, h0) else "no tissue found under the mask")
    if roi_note:
        status, error = roi_status or status, roi_note
    return {"slide_id": entry.slide_id, "status": status, "error": error, "width": w0,
            "height": h0, "mpp": mpp0, "n_candidates": len(xy), "seconds": time.perf_counter() - t0,
            "xy": xy, "frac": frac, "plan": dataclasses.asdict(plan), "qc_base": base,
            "slide": slide}


def close_slide(scan: dict[str, Any]) -> None:
    if scan.get("slide") is not None:
        scan["slide"].close()
        scan["slide"] = None


def extract_slide(entry: slides.SlideEntry, scan: dict[str, Any], idx: np.ndarray, cfg: TileConfig,
                  wd: Workdir, parts: Path, qc: QcWriter) -> dict[str, Any]:
    """Phase 3: read the chosen patches into the store, the rows into a part; the QC image with
    the boxes is drawn and encoded in ``qc``'s thread meanwhile (written only if this succeeds)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    plan = slides.ReadPlan(**scan["plan"])
    xy, frac = scan["xy"][idx], scan["frac"][idx]
    png = qc.encode(scan["qc_base"], (xy, plan.size0, scan["width"]))
    slide = None if cfg.no_pixels else scan["slide"]

    def read_into(buf: np.ndarray, part: np.ndarray, k: int) -> None:
        for i in range(k, len(part), READ_THREADS):  # reader k: every READ_THREADS-th patch
            buf[i] = slides.read_patch(slide, int(part[i, 0]), int(part[i, 1]), plan)

    def batches() -> Iterable[np.ndarray]:
        # two buffers: one is filled while the writer still holds the other; openslide
        # is thread-safe and decodes without the GIL, so a few threads read at once, each
        # into the buffer (one task per thread and batch, not one per patch)
        bufs = np.empty((2, stores.PATCH_SHARD, plan.out_size, plan.out_size, 3), np.uint8)
        ks = range(READ_THREADS)
        readers = threads.pool("patch-read", READ_THREADS)
        for b, s in enumerate(range(0, len(xy), stores.PATCH_SHARD)):
            part, buf = xy[s:s + stores.PATCH_SHARD], bufs[b % 2]
            threads.run_all(readers, read_into, [buf] * len(ks), [part] * len(ks), ks)
            yield buf[: len(part)]

    try:
        attrs = {"slide_id": entry.slide_id, "patient_id": entry.patient_id, "mpp": plan.mpp,
                 "size": plan.out_size, "level": plan.level}
        if slide is not None:  # --no-pixels: coordinates only, embed reads the slide
            stores.write_patch_batches(wd, entry.slide_id, len(xy), plan.out_size, batches(), attrs)
    except Exception as exc:  # noqa: BLE001
        return failed_row(entry, exc, t0 - scan["seconds"])
    n = len(xy)
    table = pa.table({
        "slide_id": [entry.slide_id] * n, "patient_id": [entry.patient_id] * n,
        "patch_index": np.arange(n), "x": xy[:, 0], "y": xy[:, 1], "level": np.full(n, plan.level),
        "mpp": np.full(n, plan.mpp), "size": np.full(n, plan.out_size), "tissue_fraction": frac,
    }, schema=arrow_schema(PATCH_COLUMNS))
    with atomic_path(part_path(parts, entry.slide_id, ".patches.parquet")) as tmp:
        pq.write_table(table, tmp)
    qc.write(wd.qc_image(entry.slide_id), png)
    return {**row_of(scan), "n_patches": n, "seconds": scan["seconds"] + time.perf_counter() - t0}


def row_of(scan: dict[str, Any]) -> dict[str, Any]:
    keys = ("slide_id", "status", "error", "width", "height", "mpp", "n_candidates", "seconds")
    return {k: scan[k] for k in keys}


def part_path(parts: Path, slide_id: str, suffix: str) -> Path:
    """A per-slide file of the tile records: under ``slides/`` (no internal file lives there), named
    by ``names.file_name`` (any slide id is one safe path component)."""
    return parts / "slides" / f"{file_name(slide_id)}{suffix}"


def tile_cache() -> Any:
    """One openslide tile cache for a unit's slides (they stay open from scan to extract): the
    memory of one slide's default cache (32 MiB) however many slides the patient has."""
    import openslide

    make = getattr(openslide, "OpenSlideCache", None)  # (openslide-python >= 1.3 with OpenSlide 4)
    try:
        return make(32 * 2**20) if make is not None else None
    except openslide.OpenSlideError:
        return None
