"""The tile stage: tissue mask, patch grid, a seeded per-patient patch budget, the patch store.

The unit of work is a patient (its slides share one budget): ``tile_unit`` locks the patient's
slides, scans each (mask + candidate grid), splits the budget by candidate count, reads and stores
each slide's chosen patches and leaves a per-slide record under ``.tile-parts/`` (written last).
Units run in-process, in a process pool, as one of N shards or as Dask tasks (``executors``); the
merged tables are derived from the records by the run that finds every slide finished, so an
interrupted run (or a killed shard) resumes and a re-run with the same parameters skips finished
slides.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from brcatool import artifacts, locks, outputs, slides, stores, threads, zarr_io
from brcatool.artifacts import Manifest, Workdir, atomic_path, read_json, write_json
from brcatool.errors import ArtifactError, BrcaError, InputError
from brcatool.executors import RunOptions, make_executor
from brcatool.interop import geojson as qupath_geojson
from brcatool.names import check_distinct, file_name
from brcatool.patchgrid import allocate, candidate_grid, select, slide_rng, tissue_mask
from brcatool.qc import QcWriter
from brcatool.tile_config import (
    PATCH_COLUMNS,
    SLIDE_COLUMNS,
    TileConfig,
    TileResult,
    arrow_schema,
    validate,
)
from brcatool.tile_config import params as tile_params

PARTS = ".tile-parts"
READ_THREADS = 2  # patch-reading threads per slide (plus one writing the store)


# --------------------------------------------------------------------------- per-slide work
def _failed(entry: slides.SlideEntry, exc: BaseException, t0: float) -> dict[str, Any]:
    msg = (f"{exc.message} (fix: {exc.fix})" if exc.fix else exc.message) if isinstance(exc, BrcaError) \
        else f"{type(exc).__name__}: {exc}"  # the fix too: the CLI prints this column
    return {"slide_id": entry.slide_id, "status": "failed", "error": " ".join(msg.split())[:300],
            "width": None, "height": None, "mpp": None, "n_candidates": 0,
            "seconds": time.perf_counter() - t0}


def scan_slide(entry: slides.SlideEntry, cfg: TileConfig, parts: Path, qc_dir: Path,
               qc: QcWriter, cache: Any = None) -> dict[str, Any]:
    """Phase 1: mask and candidates of one slide (a failed row instead of an exception); the QC
    base image is drawn in ``qc``'s thread. The slide stays open in the result (``"slide"``, its
    tile cache ``cache`` when given: one for the patient's slides) until ``_close_slide``."""
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
        return _failed(entry, exc, t0)
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


def _close_slide(scan: dict[str, Any]) -> None:
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
        return _failed(entry, exc, t0 - scan["seconds"])
    n = len(xy)
    table = pa.table({
        "slide_id": [entry.slide_id] * n, "patient_id": [entry.patient_id] * n,
        "patch_index": np.arange(n), "x": xy[:, 0], "y": xy[:, 1], "level": np.full(n, plan.level),
        "mpp": np.full(n, plan.mpp), "size": np.full(n, plan.out_size), "tissue_fraction": frac,
    }, schema=arrow_schema(PATCH_COLUMNS))
    with atomic_path(_part(parts, entry.slide_id, ".patches.parquet")) as tmp:
        pq.write_table(table, tmp)
    qc.write(wd.qc_image(entry.slide_id), png)
    return {**_row(scan), "n_patches": n, "seconds": scan["seconds"] + time.perf_counter() - t0}


def _row(scan: dict[str, Any]) -> dict[str, Any]:
    keys = ("slide_id", "status", "error", "width", "height", "mpp", "n_candidates", "seconds")
    return {k: scan[k] for k in keys}


# --------------------------------------------------------------------------- the stage
def _entries(cfg: TileConfig) -> list[slides.SlideEntry]:
    rows: list[tuple[Path, str | None]] = [(p, None) for p in slides.find_slides(cfg.slides)]
    if cfg.slides_table is not None:
        rows += slides.read_slides_table(cfg.slides_table)
    return slides.make_entries(rows)


def _record_path(parts: Path, slide_id: str) -> Path:
    return _part(parts, slide_id, ".json")


def _part(parts: Path, slide_id: str, suffix: str) -> Path:
    """A per-slide file of the tile records: under ``slides/`` (no internal file lives there), named
    by ``names.file_name`` (any slide id is one safe path component)."""
    return parts / "slides" / f"{file_name(slide_id)}{suffix}"


def _load_record(parts: Path, slide_id: str) -> dict[str, Any] | None:
    path = _record_path(parts, slide_id)
    try:
        return read_json(path) if path.is_file() else None
    except BrcaError:
        return None


# --------------------------------------------------------------------------- one unit: a patient
def _complete(wd: Workdir, parts: Path, e: slides.SlideEntry, rec: dict[str, Any] | None,
              group: list[slides.SlideEntry], cfg: TileConfig, *, failed_ok: bool = False) -> bool:
    """Whether the slide's record is finished for this patient's slide set (failed: see failed_ok)."""
    if rec is None or set(rec["counts"]) != {s.slide_id for s in group}:
        return False
    if rec.get("input", _input_id(e)) != _input_id(e):  # the slide file was replaced in place
        return False
    if rec.get("failed"):
        return failed_ok
    return rec["row"]["n_patches"] == 0 or (
        (cfg.no_pixels or (wd.patches_zarr / file_name(e.slide_id) / "zarr.json").is_file())
        and _part(parts, e.slide_id, ".patches.parquet").is_file())


def _lock_all(parts: Path, group: list[slides.SlideEntry]) -> list[locks.Lock] | None:
    """Per-slide locks of the patient's slides, all or none (None: another process has one)."""
    held = []
    for sid in sorted(e.slide_id for e in group):
        lock = locks.acquire(parts / "locks" / f"{file_name(sid)}.lock")
        if lock is None:
            for h in held:
                h.release()
            return None
        held.append(lock)
    return held


def tile_unit(group: list[slides.SlideEntry], cfg: TileConfig, wd: Workdir) -> dict[str, Any]:
    """Tile one patient's slides (they share the patient's budget): the unit every executor runs.

    Under the slides' lock files: scan, split the budget, read and store the chosen patches, then
    write each slide's record (last). Returns ``{"rows", "skipped", "busy", "took_over"}``;
    ``busy`` when another process holds one of the slides (it will finish them).
    """
    parts = wd.tile_parts
    held = _lock_all(parts, group)
    if held is None:
        return {"rows": {}, "skipped": 0, "busy": True, "took_over": []}
    qc = QcWriter()
    scans: dict[str, dict[str, Any]] = {}
    cache = _tile_cache()
    try:
        records = {e.slide_id: _load_record(parts, e.slide_id) for e in group}
        took_over = [f"{h.path.stem}: {h.took_over.describe()}" for h in held if h.took_over]
        if all(_complete(wd, parts, e, records[e.slide_id], group, cfg) for e in group):
            return {"rows": {e.slide_id: records[e.slide_id]["row"] for e in group},
                    "skipped": len(group), "busy": False, "took_over": took_over}
        for e in group:  # (filled in place: the finally closes the slides of a unit that failed midway)
            scans[e.slide_id] = scan_slide(e, cfg, parts, wd.qc_dir, qc, cache)
        counts = {sid: scan["n_candidates"] for sid, scan in scans.items()}
        alloc = allocate(None if cfg.sampling == "all" else cfg.patches, counts)
        rows: dict[str, dict[str, Any]] = {}
        skipped = 0
        for e in group:
            sid, scan, rec = e.slide_id, scans[e.slide_id], records[e.slide_id]
            if rec is not None and rec["counts"] == counts and _complete(wd, parts, e, rec, group, cfg):
                rows[sid] = rec["row"]
                skipped += 1
                _close_slide(scan)
                continue
            _record_path(parts, sid).unlink(missing_ok=True)
            if scan["status"] == "ok" and alloc[sid] > 0:
                idx = select(scan["xy"], alloc[sid], cfg.sampling, slide_rng(cfg.seed, e.patient_id, sid))
                row = extract_slide(e, scan, idx, cfg, wd, parts, qc)
            else:
                row = {**_row(scan), "n_patches": 0}
                if scan["status"] == "ok":  # candidates, but the patient's budget went elsewhere
                    qc.write(wd.qc_image(sid), qc.encode(scan["qc_base"]))
            _close_slide(scan)
            row.setdefault("n_patches", 0)
            rows[sid] = row
            qc.flush()  # the slide's QC outputs are complete before its record
            # failed slides are recorded too (the merge needs their rows) but retried by a re-run
            write_json(_record_path(parts, sid), {"row": row, "counts": counts, "input": _input_id(e),
                                                  "failed": row["status"] == "failed"})
        return {"rows": rows, "skipped": skipped, "busy": False, "took_over": took_over}
    finally:
        for scan in scans.values():
            _close_slide(scan)
        qc.close()
        for h in held:
            h.release()


def _tile_cache() -> Any:
    """One openslide tile cache for a unit's slides (they stay open from scan to extract): the
    memory of one slide's default cache (32 MiB) however many slides the patient has."""
    import openslide

    make = getattr(openslide, "OpenSlideCache", None)  # (openslide-python >= 1.3 with OpenSlide 4)
    try:
        return make(32 * 2**20) if make is not None else None
    except openslide.OpenSlideError:
        return None


def _unit_failed(group: list[slides.SlideEntry], exc: BaseException) -> dict[str, Any]:
    """The unit's result when it raised or its worker died: every slide a failed row (not recorded)."""
    t0 = time.perf_counter()
    return {"rows": {e.slide_id: {**_failed(e, exc, t0), "n_patches": 0} for e in group},
            "skipped": 0, "busy": False, "took_over": []}


# --------------------------------------------------------------------------- the stage
class _Bar:
    """Rich progress with slides/s and patches/s; silent when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        if not enabled:  # (rich.progress is not even imported)
            self.progress: Any = contextlib.nullcontext()
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                 disable=not enabled)

    def phase(self, name: str, total: int) -> Callable[[int], None]:
        if not self.enabled:
            return lambda patches=0: None
        task = self.progress.add_task(name, total=total, rate="")
        t0, done = time.perf_counter(), [0, 0]

        def step(patches: int = 0) -> None:
            done[0] += 1
            done[1] += patches
            dt = max(time.perf_counter() - t0, 1e-9)
            rate = f"{done[0] / dt:.2f} slides/s" + (f"  {done[1] / dt:.0f} patches/s" if done[1] else "")
            self.progress.update(task, advance=1, rate=rate)
        return step


def _run_options(cfg: TileConfig) -> RunOptions:
    opts = RunOptions(workers=cfg.workers, shard=cfg.shard, dask=cfg.dask, merge=cfg.merge)
    opts.validate()
    if cfg.overwrite and cfg.shard:
        raise InputError("--overwrite with --shard would let each shard wipe the others' work",
                         fix="run `brcatool tile --overwrite` once without --shard (or clear the workdir), "
                             "then start the shards")
    return opts


def _input_id(e: slides.SlideEntry) -> dict[str, Any]:
    """What a slide's record was made from: a file replaced in place (new size or mtime) is re-done."""
    fp = artifacts.fingerprint(e.path)
    return {"size": fp["size"], "mtime": fp["mtime"]}


def run_tile(workdir: Path | Workdir, cfg: TileConfig, *, progress: bool = True) -> TileResult:
    """``_tile``; with ``--overwrite`` the new outputs are built beside the old ones and swapped in
    only when the run succeeded (an interrupted or failed overwrite leaves the old outputs whole)."""
    wd = workdir if isinstance(workdir, Workdir) else Workdir(Path(workdir))
    finals = [wd.patches_zarr, wd.qc_dir, wd.tile_parts, wd.patches_table, wd.slides_table,
              wd.stage_manifest("tile").with_suffix(".yaml"), wd.stage_manifest("tile")]
    if not cfg.overwrite or not any(p.exists() for p in finals):
        return _tile(wd, cfg, progress=progress)
    validate(cfg)
    _run_options(cfg)
    with outputs.stage_lock(wd, "tile-overwrite"), \
            outputs.replacing(wd, finals, tag="tile") as staged:
        res = _tile(staged, cfg, progress=progress)
        if res.pending:  # not finished: keep the old outputs
            raise ArtifactError("the overwrite did not finish every slide", path=wd.root,
                                fix="re-run `brcatool tile --overwrite` (without --shard)")
    return dataclasses.replace(res, slides_table=wd.slides_table, patches_table=wd.patches_table)


def _tile(workdir: Path | Workdir, cfg: TileConfig, *, progress: bool = True) -> TileResult:
    """Tile every slide (or this shard's) into the workdir's patch store, resuming finished slides.

    The tables are merged from the per-slide records by the run that finds every slide finished
    (the last shard, a run without ``--shard``, or ``--merge``); until then ``TileResult.pending``
    counts the slides left to other shards/processes and the tables are not written.
    """
    t_start = time.perf_counter()
    validate(cfg)
    opts = _run_options(cfg)
    wd = workdir if isinstance(workdir, Workdir) else Workdir(Path(workdir))
    entries = _entries(cfg)
    if not entries:
        raise InputError("no slide files found", path=", ".join(cfg.slides) or cfg.slides_table,
                         fix=f"folders are searched for {', '.join(slides.SLIDE_SUFFIXES)}")
    uniq: dict[str, slides.SlideEntry] = {}
    dup_rows = []
    for e in entries:
        if e.slide_id in uniq:
            dup_rows.append({**_failed(e, InputError(f"duplicate slide_id (also {uniq[e.slide_id].path})"),
                                       time.perf_counter()), "n_patches": 0,
                             "patient_id": e.patient_id, "path": str(e.path)})
        else:
            uniq[e.slide_id] = e
    params = tile_params(cfg)
    parts = wd.tile_parts
    check_distinct(uniq, what="slide id")
    # check and record the parameters as one step: of two runs with other parameters started
    # together, the second is refused (same parameters: they share the work, slide by slide)
    with outputs.stage_lock(wd, "tile-params", wait=60):
        artifacts.check_params(wd.stage_manifest("tile"), params, overwrite=cfg.overwrite, what="tile output")
        artifacts.check_params(parts / "params.json", params, overwrite=cfg.overwrite,
                               what="an unfinished tile run")
        wd.qc_dir.mkdir(parents=True, exist_ok=True)
        write_json(parts / "params.json", {"params": artifacts.normalise(params)})
    if not cfg.no_pixels and wd.patches_zarr.exists():  # check it now; a new one is made by the first slide
        zarr_io.ensure_group(wd.patches_zarr, schema="patch-store")

    patients: dict[str, list[slides.SlideEntry]] = {}
    for e in uniq.values():
        patients.setdefault(e.patient_id, []).append(e)
    mine = list(patients) if opts.shard_spec is None else \
        opts.shard_spec.take({pid: len(group) for pid, group in patients.items()})

    def finished(pid: str, *, failed_ok: bool) -> bool:
        group = patients[pid]
        return all(_complete(wd, parts, e, _load_record(parts, e.slide_id), group, cfg, failed_ok=failed_ok)
                   for e in group)

    todo = [] if opts.merge else [pid for pid in mine if not finished(pid, failed_ok=False)]
    skipped = sum(len(patients[pid]) for pid in mine) - sum(len(patients[pid]) for pid in todo)
    unrecorded: dict[str, dict[str, Any]] = {}  # failed rows of units that raised (never recorded)
    busy = took_over = 0
    bar = _Bar(progress)
    with bar.progress, make_executor(opts) as executor:
        step = bar.phase("tiling", sum(len(patients[pid]) for pid in todo))
        jobs = [(patients[pid], cfg, wd) for pid in todo]
        for job, res in executor.map(tile_unit, jobs, lambda job, exc: _unit_failed(job[0], exc)):
            skipped += res["skipped"]
            busy += len(job[0]) if res["busy"] else 0
            took_over += len(res["took_over"])
            for sid, row in res["rows"].items():
                if row["status"] == "failed" and _load_record(parts, sid) is None:
                    unrecorded[sid] = row
                step(row.get("n_patches", 0))
            for _ in range(len(job[0]) - len(res["rows"])):
                step()
    pending = [pid for pid in patients if not finished(pid, failed_ok=True)
               and not all(e.slide_id in unrecorded for e in patients[pid])]
    base = {"workdir": wd.root, "slides_table": wd.slides_table, "patches_table": wd.patches_table,
            "n_patients": len(patients), "n_skipped": skipped, "busy": busy, "took_over": took_over}
    if pending:
        if opts.merge:
            raise ArtifactError(f"{sum(len(patients[p]) for p in pending)} slide(s) are not tiled yet",
                                path=parts, fix="run the remaining shards (or tile without --shard) first")
        n_pending = sum(len(patients[p]) for p in pending)
        return TileResult(**base, rows=[], n_patches=0, seconds=time.perf_counter() - t_start,
                          pending=n_pending)
    if not cfg.no_pixels and not (wd.patches_zarr / "zarr.json").is_file():  # no slide gave patches
        zarr_io.ensure_group(wd.patches_zarr, schema="patch-store")
    with locks.locked(parts / "locks" / "merge.lock", wait=600):
        return _merge(wd, cfg, uniq, dup_rows, unrecorded, params, base, t_start)


def _merge(wd: Workdir, cfg: TileConfig, uniq: dict[str, slides.SlideEntry], dup_rows: list[dict[str, Any]],
           unrecorded: dict[str, dict[str, Any]], params: dict[str, Any], base: dict[str, Any],
           t_start: float) -> TileResult:
    """slides.parquet, patches.parquet and the manifest, derived from the per-slide records."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from brcatool.config import write_yaml

    parts = wd.tile_parts
    rows = {sid: unrecorded.get(sid) or _load_record(parts, sid)["row"] for sid in uniq}
    out_rows = [{**rows[e.slide_id], "patient_id": e.patient_id, "path": str(e.path)}
                for e in uniq.values()] + dup_rows
    for r in out_rows:
        r.setdefault("n_patches", 0)
    with_patches = [r["slide_id"] for r in out_rows if r["status"] == "ok" and r["n_patches"] > 0]
    if wd.patches_zarr.is_dir():
        for name in set(zarr_io.array_names(wd.patches_zarr)) - {file_name(s) for s in with_patches}:
            shutil.rmtree(wd.patches_zarr / name, ignore_errors=True)  # stale: failed or dropped now
    # every slide is finished: temporaries a killed process left (mid-slide arrays too) are debris
    for folder, finals in ((wd.patches_zarr, None), (parts / "slides", None), (wd.qc_dir, None),
                           (wd.slides_table.parent, (wd.slides_table.name, wd.patches_table.name)),
                           (wd.stage_manifest("tile").parent, ("tile.json", "tile.yaml"))):
        outputs.clean_debris(folder, finals)
    slide_table = pa.Table.from_pylist([{k: r.get(k) for k in SLIDE_COLUMNS} for r in out_rows],
                                       schema=arrow_schema(SLIDE_COLUMNS))
    patch_parts = [pq.ParquetFile(_part(parts, sid, ".patches.parquet")).read() for sid in with_patches]
    patch_table = (pa.concat_tables(patch_parts) if patch_parts
                   else arrow_schema(PATCH_COLUMNS).empty_table())
    artifacts.write_parquet(slide_table, wd.slides_table, schema="slides")
    artifacts.write_parquet(patch_table, wd.patches_table, schema="patches")
    write_yaml(cfg, wd.stage_manifest("tile").with_suffix(".yaml"))
    manifest = Manifest("tile", params)
    for e in uniq.values():
        manifest.add_input(e.path)
    n_patches = int(patch_table.num_rows)
    counts_out = {s: sum(r["status"] == s for r in out_rows) for s in ("ok", "no_tissue", "failed")}
    manifest.write(wd.stage_manifest("tile"), counts={"slides": len(out_rows), "patients": base["n_patients"],
                                                      "patches": n_patches, "skipped": base["n_skipped"],
                                                      **counts_out},
                   fingerprint=outputs.output_fingerprint(params, [_input_id(e) for e in uniq.values()],
                                                  files=[wd.patches_table]))
    return TileResult(**base, rows=out_rows, n_patches=n_patches, seconds=time.perf_counter() - t_start)
