"""`brcatool tile`: slides -> tissue patches in the workdir's patch store."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from brcatool.cli.common import (
    ConfigOpt,
    DaskOpt,
    MergeOpt,
    OverwriteOpt,
    QuietOpt,
    SeedOpt,
    ShardOpt,
    WorkdirOpt,
    console,
    default_workdir,
    fail,
    report_errors,
)


class Sampling(str, Enum):
    random = "random"
    spread = "spread"
    all = "all"


class RoiMissing(str, Enum):
    skip = "skip"
    whole = "whole"


class TissueMethod(str, Enum):
    otsu_sat = "otsu-sat"
    otsu_gray = "otsu-gray"


@report_errors
def tile(
    slides: Annotated[list[Path] | None, typer.Argument(
        help="Slide files and/or folders (searched recursively) in formats openslide reads.",
        show_default=False)] = None,
    slides_table: Annotated[Path | None, typer.Option(
        "--slides-table", dir_okay=False,
        help="CSV/TSV/Parquet: `path` (relative to the table) and optional `patient_id`.")] = None,
    patches: Annotated[int, typer.Option(
        "--patches", "-n", min=1, help="Patches per patient, shared across the patient's slides.")] = 35,
    sampling: Annotated[Sampling, typer.Option(
        "--sampling", help="random (seeded), spread (farthest-point over the tissue) or all.")
    ] = Sampling.random,
    mpp: Annotated[float | None, typer.Option(
        "--mpp", help="Target µm/px of the patches (default 0.5, about 20x).",
        show_default=False)] = None,
    magnification: Annotated[float | None, typer.Option(
        "--magnification", help="Target magnification instead of --mpp (mpp = 10 / magnification).")] = None,
    patch_size: Annotated[int, typer.Option("--patch-size", min=8, help="Patch side in output px.")] = 256,
    stride: Annotated[int | None, typer.Option(
        "--stride", min=1, help="Grid step in output px (default: --patch-size).")] = None,
    min_tissue: Annotated[float, typer.Option(
        "--min-tissue", min=0.0, max=1.0, help="Tissue fraction a patch needs under the mask.")] = 0.5,
    tissue_method: Annotated[TissueMethod, typer.Option(
        "--tissue-method", help="Otsu threshold on HSV saturation (otsu-sat) or on grey levels.")
    ] = TissueMethod.otsu_sat,
    min_area: Annotated[float, typer.Option(
        "--min-area", min=0.0, help="Tissue pieces smaller than this many µm² are dropped.")] = 5000.0,
    mpp_fallback: Annotated[float | None, typer.Option(
        "--mpp-fallback", help="Level-0 µm/px for slides whose mpp metadata is missing or implausible.")
    ] = None,
    no_pixels: Annotated[bool, typer.Option(
        "--no-pixels", help="Write coordinates (patches.parquet) and QC but no patches.zarr; "
                            "embed then reads each patch from the slide.")] = False,
    roi: Annotated[Path | None, typer.Option(
        "--roi", file_okay=False, exists=True,
        help="Folder of QuPath GeoJSON annotation exports, one per slide (<slide_id>.geojson): keep only "
        "patches whose centre lies inside (holes excluded), on tissue.")] = None,
    roi_missing: Annotated[RoiMissing, typer.Option(
        "--roi-missing", help="Slides without an ROI file: whole (tile all tissue) or skip.")
    ] = RoiMissing.whole,
    roi_class: Annotated[str | None, typer.Option(
        "--roi-class", metavar="NAME[,NAME]",
        help="Keep only ROI annotations of these QuPath classes (a derived class matches its full name or "
        "any part). Ignored classes (Ignore*, Region*: names ending in *) are never ROI.",
        show_default=False)] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Processes working on slides.")] = 1,
    shard: ShardOpt = None,
    dask: DaskOpt = None,
    merge: MergeOpt = False,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Exit non-zero when any slide failed.")] = False,
    workdir: WorkdirOpt = default_workdir(),
    config: ConfigOpt = None,
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Find tissue (Otsu), grid it into patches and store a seeded per-patient sample.

    Writes patches.zarr, patches.parquet, slides.parquet and qc/*.png into the workdir.

    A slide that cannot be read becomes a failed row; re-running the same command resumes.
    """
    from brcatool.errors import InputError
    from brcatool.tiling import TileConfig, run_tile

    if mpp is not None and magnification is not None:
        raise InputError("give --mpp or --magnification, not both")
    cfg = TileConfig(
        slides=[str(p) for p in slides or []],
        slides_table=str(slides_table) if slides_table is not None else None,
        patches=patches, sampling=Sampling(sampling).value, mpp=mpp if mpp is not None else TileConfig.mpp,
        magnification=magnification, patch_size=patch_size, stride=stride, min_tissue=min_tissue,
        tissue_method=TissueMethod(tissue_method).value, min_area=min_area, mpp_fallback=mpp_fallback,
        roi=str(roi) if roi is not None else None, roi_missing=RoiMissing(roi_missing).value,
        roi_class=[c.strip() for c in (roi_class or "").split(",") if c.strip()],
        seed=seed, no_pixels=no_pixels, workers=workers, shard=shard, dask=dask, merge=merge,
        overwrite=overwrite, strict=strict,
    )
    result = run_tile(workdir, cfg, progress=not quiet)
    if result.pending:
        if not quiet:
            console.print(f"tile: this run's slides are done; {result.pending} slide(s) are left to other "
                          f"shards/processes (the last to finish writes the tables, or run with --merge)")
        return
    failed = [r for r in result.rows if r["status"] == "failed"]
    if not quiet:
        _summary(result, failed)
    if result.count("ok") == 0:
        raise fail("no slide gave patches; see the error column of slides.parquet")
    if strict and failed:
        raise fail(f"{len(failed)} slide(s) failed (--strict)")


def _summary(result, failed: list[dict]) -> None:  # noqa: ANN001 - TileResult, imported lazily
    from rich.table import Table

    table = Table(title=f"tile: {result.workdir}", show_header=True)
    for name in ("slides", "ok", "no tissue", "failed", "skipped", "patients", "patches", "seconds"):
        table.add_column(name, justify="right")
    table.add_row(str(len(result.rows)), str(result.count("ok")), str(result.count("no_tissue")),
                  str(len(failed)), str(result.n_skipped), str(result.n_patients),
                  str(result.n_patches), f"{result.seconds:.1f}")
    console.print(table)
    if result.count("no_roi"):
        console.print(f"{result.count('no_roi')} slide(s) without an ROI file skipped (--roi-missing skip)")
    if result.took_over:
        console.print(f"took over {result.took_over} stale slide lock(s) of processes that had died")
    for r in failed[:10]:
        console.print(f"[red]failed[/] {r['slide_id']}: {r['error']}", soft_wrap=True)
    if len(failed) > 10:
        console.print(f"... and {len(failed) - 10} more failed slides (see slides.parquet)")
