"""`brcatool import-features`: CLAM/TRIDENT/STAMP/.pt feature files -> features/<encoder>/ + patch tables."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from brcatool.cli.common import (
    ConfigOpt,
    OverwriteOpt,
    QuietOpt,
    WorkdirOpt,
    console,
    default_workdir,
    fail,
    report_errors,
)


class Format(str, Enum):
    clam = "clam"
    trident = "trident"
    stamp = "stamp"
    pt = "pt"


@report_errors
def import_features(
    source: Annotated[Path, typer.Argument(
        help="Folder of per-slide feature files (CLAM features/ or h5_files/, TRIDENT features_<enc>/ "
        "or its job folder, STAMP output folder, pt_files/).", show_default=False)],
    format: Annotated[Format, typer.Option(  # noqa: A002 - the option is --format
        "--format", "-f", help="Layout of the files: clam, trident, stamp or pt.")] = Format.trident,
    encoder: Annotated[str, typer.Option(
        "--encoder", "-e", help="Name of the feature store to write (features/<NAME>/), e.g. uni_v1.",
        show_default=False)] = "",
    mpp: Annotated[float | None, typer.Option(
        "--mpp", help="Level-0 µm/px of the slides (wins over the files; CLAM and STAMP files do not "
        "record it).", show_default=False)] = None,
    slides_table: Annotated[Path | None, typer.Option(
        "--slides-table", dir_okay=False, exists=True,
        help="CSV/TSV/Parquet with slide_id (or path) and patient_id, optional mpp and path of the "
        "slide file (for heatmap thumbnails).")] = None,
    coords: Annotated[Path | None, typer.Option(
        "--coords", file_okay=False, exists=True,
        help="Folder of coordinate .h5 files with patch attributes (CLAM patches/; needed for pt).")] = None,
    patch_size: Annotated[int | None, typer.Option(
        "--patch-size", min=1, help="Patch side in level-0 px, when no file attribute gives it.")] = None,
    workdir: WorkdirOpt = default_workdir(),
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Import patch features extracted by CLAM, TRIDENT or STAMP as a normal feature store.

    Writes features/<NAME>/ (as embed does), patches.parquet and slides.parquet (coordinates, no
    pixels), so prep-expr, train, evaluate and ablate run unchanged. Bad files become failed rows.
    """
    from brcatool.interop.importer import ImportConfig, run_import_features

    if not encoder:
        raise fail("--encoder NAME is required (the name of the feature store, e.g. uni_v1)")
    cfg = ImportConfig(source=str(source), format=Format(format).value, encoder=encoder, mpp=mpp,
                       slides_table=str(slides_table) if slides_table else None,
                       coords=str(coords) if coords else None, patch_size=patch_size, overwrite=overwrite)
    res = run_import_features(workdir, cfg, progress=not quiet)
    failed = [r for r in res.rows if r["status"] == "failed"]
    if not quiet:
        from rich.table import Table
        from rich.text import Text

        table = Table(title=f"import-features: {res.features_dir}", show_header=False)
        for k, v in (("format", cfg.format), ("slides imported", str(res.count("ok"))),
                     ("failed", str(len(failed))), ("patches", f"{res.n_patches:,}"),
                     ("dim", str(res.dim)), ("weights identity", res.params["weights"]),
                     ("seconds", f"{res.seconds:.1f}")):
            table.add_row(k, Text(v))  # plain text: "imported:trident:uni_v1" is no :emoji: code
        console.print(table)
        for line in res.warnings:
            console.print(f"[yellow]warning:[/] {line}", soft_wrap=True)
        for r in failed[:10]:
            console.print(f"[red]failed[/] {r['slide_id']}: {r['error']}", soft_wrap=True)
        if len(failed) > 10:
            console.print(f"... and {len(failed) - 10} more (see slides.parquet)")
