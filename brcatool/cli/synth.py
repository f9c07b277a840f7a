"""`brcatool synth`: write a synthetic TCGA-BRCA-like cohort (slides + expression + clinical)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brcatool.cli.common import ConfigOpt, OverwriteOpt, QuietOpt, SeedOpt, console, report_errors
from brcatool.errors import InputError


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--slide-size must look like WIDTHxHEIGHT, got {text!r}",
                         fix="use e.g. --slide-size 3072x2304") from None
    return w, h


@report_errors
def synth(
    out: Annotated[Path, typer.Argument(file_okay=False, help="Folder to write the cohort into.")],
    patients: Annotated[int, typer.Option("--patients", "-n", min=1, help="Number of patients.")] = 24,
    svs_fraction: Annotated[float, typer.Option(
        "--svs-fraction", min=0.0, max=1.0, help="Share of slides written as Aperio .svs.")] = 0.0,
    image_signal: Annotated[float, typer.Option(
        "--image-signal", min=0.0, help="How strongly subtype shows in the slides (0 = none).")] = 1.0,
    gene_signal: Annotated[float, typer.Option(
        "--gene-signal", min=0.0, help="How strongly subtype shows in expression (0 = none).")] = 1.0,
    genes: Annotated[int, typer.Option("--genes", min=60, help="Genes in expression.tsv.")] = 2000,
    slide_size: Annotated[str, typer.Option(
        "--slide-size", help="Largest slide size WIDTHxHEIGHT in px at level 0 (mpp 0.5).")
    ] = "3072x2304",
    no_tissue_slides: Annotated[int, typer.Option(
        "--no-tissue-slides", min=0, help="Slides that are background only.")] = 0,
    layout: Annotated[list[str] | None, typer.Option(
        "--layout", help="Also write expression + labels as downloaded: gdc, cbioportal, xena "
                         "(repeat or comma-separate) into OUT/<layout>/.")] = None,
    config: ConfigOpt = None,
    seed: SeedOpt = 0,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a deterministic synthetic cohort laid out like TCGA-BRCA (same seed, same data)."""
    from brcatool.synth.cohort import make_cohort, summary

    files = make_cohort(out, patients=patients, seed=seed, svs_fraction=svs_fraction,
                        image_signal=image_signal, gene_signal=gene_signal, genes=genes,
                        slide_size=_size(slide_size), no_tissue_slides=no_tissue_slides,
                        overwrite=overwrite, progress=not quiet)
    written = []
    if layout:
        from brcatool.synth.layouts import write_layout

        for name in [v.strip() for item in layout for v in item.split(",") if v.strip()]:
            written.append(write_layout(files.expression, files.clinical, name, out / name,
                                        overwrite=overwrite))
    if quiet:
        return
    from rich.table import Table

    table = Table(title=f"synthetic cohort in {out}", show_header=False)
    for name, value in summary(files).items():
        table.add_row(name.replace("_", " "), str(value))
    for label, path in (("slides", files.slides_dir), ("expression", files.expression),
                        ("clinical", files.clinical), ("truth", files.truth_dir)):
        table.add_row(label, str(path))
    for lf in written:
        table.add_row(f"{lf.layout} expression", str(lf.expression))
        table.add_row(f"{lf.layout} clinical", str(lf.clinical))
    console.print(table)
