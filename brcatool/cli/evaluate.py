"""`brcatool evaluate`: metrics with uncertainty, plots and patch weights of a finished run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from brcatool.cli.common import (
    ConfigOpt,
    OverwriteOpt,
    QuietOpt,
    SeedOpt,
    WorkdirOpt,
    console,
    default_workdir,
    fmt_metric,
    report_errors,
)

NAMES = {"f1": "F1", "pr_auc": "PR-AUC", "roc_auc": "ROC-AUC", "accuracy": "accuracy", "mcc": "MCC",
         "balanced_accuracy": "balanced accuracy", "brier": "Brier (lower is better)"}


@report_errors
def evaluate(
    run: Annotated[str | None, typer.Option(
        "--run", help="Run name under runs/.", show_default="the latest finished run")] = None,
    on: Annotated[Path | None, typer.Option(
        "--on", file_okay=False, exists=True,
        help="Another prepared workdir: apply the run's fold models (ensemble) there.")] = None,
    bootstrap: Annotated[int, typer.Option(
        "--bootstrap", help="Patient-level bootstrap resamples for the 95 % CI (0 = none).")] = 1000,
    top_k: Annotated[int, typer.Option(
        "--top-k", help="Highest-weighted patches per patient in the montage PNG (0 = none).")] = 8,
    attention: Annotated[bool, typer.Option(
        "--attention/--no-attention", help="Export per-patch weights: attention, or leave-one-patch-out "
        "occlusion for models without attention (attention.parquet, its `method` column).")] = True,
    heatmaps: Annotated[bool, typer.Option(
        "--heatmaps", help="Draw patch weights on each slide's thumbnail.")] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write PNG figures.")] = True,
    geojson: Annotated[bool, typer.Option(
        "--geojson", help="One QuPath GeoJSON per slide (eval/geojson/): patch tiles with their weight "
        "and the slide's prediction (File > Import objects).")] = False,
    device: Annotated[str, typer.Option("--device", help="cpu | cuda[:N] for model inference.")] = "cpu",
    workdir: WorkdirOpt = default_workdir(),
    config: ConfigOpt = None,
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Score a run: F1, PR-AUC, ROC-AUC, MCC, balanced accuracy, Brier with fold sd and bootstrap CI."""
    from brcatool.evaluation import EvaluateConfig, run_evaluate

    cfg = EvaluateConfig(run=run, on=str(on) if on is not None else None, bootstrap=bootstrap, top_k=top_k,
                         attention=attention,
                         heatmaps=heatmaps, plots=plots, geojson=geojson, device=device, seed=seed,
                         overwrite=overwrite)
    result = run_evaluate(workdir, cfg, progress=not quiet)
    if not quiet:
        print_result(result)


def print_result(result: Any) -> None:
    """The metrics table and where the outputs are."""
    from rich.table import Table

    if result.skipped:
        console.print(f"[yellow]evaluation of {result.run!r} already exists with these parameters; "
                      "shown from disk[/]")
    where = "out-of-fold" if result.scope == "oof" else result.scope.replace("external:", "external cohort ")
    table = Table(title=f"{result.run} — {where} ({result.n_patients} patients, {result.task}: "
                        f"{' vs '.join(result.classes)})")
    for col in ("metric", "pooled", "per fold mean ± sd", "95 % CI" + (f" ({result.bootstrap} boot)"
                                                                      if result.bootstrap else "")):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, pooled, mean, sd, lo, hi in result.rows():
        table.add_row(NAMES.get(name, name), fmt_metric(pooled), f"{fmt_metric(mean)} ± {fmt_metric(sd)}",
                      f"[{fmt_metric(lo)}, {fmt_metric(hi)}]" if result.bootstrap else "")
    console.print(table)
    console.print(f"outputs: {result.out_dir}", soft_wrap=True)
    if result.plots:
        console.print(f"  plots: {', '.join(p.name for p in result.plots)}", soft_wrap=True)
    if result.attention is not None:
        console.print(f"  patch weights: {result.attention.name}; top-k montages: {result.montages}; "
                      f"heatmaps: {result.heatmaps}", soft_wrap=True)
    for note in result.notes:
        console.print(f"  [yellow]note:[/] {note}", soft_wrap=True)
