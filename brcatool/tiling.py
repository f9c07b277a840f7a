"""The tile stage: tissue mask, patch grid, a seeded per-patient patch budget, the patch store.

The unit of work is a patient (its slides share one budget): ``tile_unit`` locks the patient's
slides, scans each (mask + candidate grid), splits the budget by candidate count, reads and stores
each slide's chosen patches (``brcatool.tile_slide``: one slide's work) and leaves a per-slide
record under ``.tile-parts/`` (written last).
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brcatool import artifacts, locks, outputs, slides, tile_slide, zarr_io
from brcatool.artifacts import Manifest, Workdir, read_json, write_json
from brcatool.errors import ArtifactError, BrcaError, InputError
from brcatool.executors import RunOptions, make_executor
from brcatool.names import check_distinct, file_name
from brcatool.patchgrid import allocate, select, slide_rng
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


# --------------------------------------------------------------------------- the stage
def _entries(cfg: TileConfig) -> list[slides.SlideEntry]:
    rows: list[tuple[Path, str | None]] = [(p, None) for p in slides.find_slides(cfg.slides)]
    if cfg.slides_table is not None:
        rows += slides.read_slides_table(cfg.slides_table)
    return slides.make_entries(rows)


def _record_path(parts: Path, slide_id: str) -> Path:
    return tile_slide.part_path(parts, slide_id, ".json")


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
        and tile_slide.part_path(parts, e.slide_id, ".patches.parquet").is_file())


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
    cache = tile_slide.tile_cache()
    try:
        records = {e.slide_id: _load_record(parts, e.slide_id) for e in group}
        took_over = [f"{h.path.stem}: {h.took_over.describe()}" for h in held if h.took_over]
        if all(_complete(wd, parts, e, records[e.slide_id], group, cfg) for e in group):
            return {"rows": {e.slide_id: records[e.slide_id]["row"] for e in group},
                    "skipped": len(group), "busy": False, "took_over": took_over}
        for e in group:  # (filled in place: the finally closes the slides of a unit that failed midway)
            scans[e.slide_id] = tile_slide.scan_slide(e, cfg, wd.qc_dir, qc, cache)
        counts = {sid: scan["n_candidates"] for sid, scan in scans.items()}
        alloc = allocate(None if cfg.sampling == "all" else cfg.patches, counts)
        rows: dict[str, dict[str, Any]] = {}
        skipped = 0
        for e in group:
            sid, scan, rec = e.slide_id, scans[e.slide_id], records[e.slide_id]
            if rec is not None and rec["counts"] == counts and _complete(wd, parts, e, rec, group, cfg):
                rows[sid] = rec["row"]
                skipped += 1
                tile_slide.close_slide(scan)
                continue
            _record_path(parts, sid).unlink(missing_ok=True)
            if scan["status"] == "ok" and alloc[sid] > 0:
                idx = select(scan["xy"], alloc[sid], cfg.sampling, slide_rng(cfg.seed, e.patient_id, sid))
                row = tile_slide.extract_slide(e, scan, idx, cfg, wd, parts, qc)
            else:
                row = {**tile_slide.row_of(scan), "n_patches": 0}
                if scan["status"] == "ok":  # candidates, but the patient's budget went elsewhere
                    qc.write(wd.qc_image(sid), qc.encode(scan["qc_base"]))
            tile_slide.close_slide(scan)
            row.setdefault("n_patches", 0)
            rows[sid] = row
            qc.flush()  # the slide's QC outputs are complete before its record
            # failed slides are recorded too (the merge needs their rows) but retried by a re-run
            write_json(_record_path(parts, sid), {"row": row, "counts": counts, "input": _input_id(e),
                                                  "failed": row["status"] == "failed"})
        return {"rows": rows, "skipped": skipped, "busy": False, "took_over": took_over}
    finally:
        for scan in scans.values():
            tile_slide.close_slide(scan)
        qc.close()
        for h in held:
            h.release()


def _unit_failed(group: list[slides.SlideEntry], exc: BaseException) -> dict[str, Any]:
    """The unit's result when it raised or its worker died: every slide a failed row (not recorded)."""
    t0 = time.perf_counter()
    return {"rows": {e.slide_id: {**tile_slide.failed_row(e, exc, t0), "n_patches": 0} for e in group},
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
            dup = InputError(f"duplicate slide_id (also {uniq[e.slide_id].path})")
            dup_rows.append({**tile_slide.failed_row(e, dup, time.perf_counter()), "n_patches": 0,
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
    patch_parts = [pq.ParquetFile(tile_slide.part_path(parts, sid, ".patches.parquet")).read()
                   for sid in with_patches]
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
