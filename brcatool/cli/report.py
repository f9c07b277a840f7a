"""`brcatool report`: one self-contained HTML page of a workdir (cohort to ablation)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brcatool.cli.common import ConfigOpt, QuietOpt, WorkdirOpt, console, default_workdir, report_errors


@report_errors
def report(
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", dir_okay=False, help="The HTML file to write.",
        show_default="WORKDIR/report.html")] = None,
    runs: Annotated[list[str] | None, typer.Option(
        "--runs", help="Runs to show (repeat the option or separate names with commas).",
        show_default="every finished run")] = None,
    patients: Annotated[int, typer.Option(
        "--patients", help="Patients per run in the Interpretability section.")] = 6,
    thumb_side: Annotated[int, typer.Option(
        "--thumb-side", help="Longest side in pixels of each slide thumbnail.")] = 320,
    title: Annotated[str | None, typer.Option("--title", help="Page title.",
                                              show_default="the workdir's name")] = None,
    workdir: WorkdirOpt = default_workdir(),
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Write one HTML page (images inlined, no network) from the workdir's artifacts, at any stage."""
    from brcatool.report import ReportConfig, run_report

    names = [n.strip() for value in runs or [] for n in value.split(",") if n.strip()]
    cfg = ReportConfig(out=str(out) if out is not None else None, runs=names, patients=patients,
                       thumb_side=thumb_side, title=title)
    result = run_report(workdir, cfg)
    if not quiet:
        console.print(result.summary(), soft_wrap=True)
        for note in result.notes:
            console.print(f"  [yellow]note:[/] {note}", soft_wrap=True)
    console.print(f"open {result.path.resolve().as_uri()}", soft_wrap=True)
