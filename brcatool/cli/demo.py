"""`brcatool demo`: the whole pipeline on a generated synthetic cohort, end to end."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from brcatool.cli.common import (
    ConfigOpt,
    OverwriteOpt,
    QuietOpt,
    SeedOpt,
    WorkdirOpt,
    console,
    report_errors,
)
from brcatool.pipeline import DemoConfig


@report_errors
def demo(
    workdir: WorkdirOpt = "demo-work",  # type: ignore[assignment]
    patients: Annotated[int, typer.Option(
        "--patients", "-n", help="Synthetic patients.")] = DemoConfig.patients,
    patches: Annotated[int, typer.Option("--patches", help="Patches per patient.")] = DemoConfig.patches,
    epochs: Annotated[int, typer.Option("--epochs", help="Maximum epochs per fold.")] = DemoConfig.epochs,
    patience: Annotated[int, typer.Option(
        "--patience", help="Early-stopping patience (epochs).")] = DemoConfig.patience,
    config: ConfigOpt = None,
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Generate a synthetic TCGA-like cohort and run every stage on it (resumes if re-run)."""
    from pathlib import Path

    from brcatool.pipeline import run_demo

    cfg = DemoConfig(patients=patients, patches=patches, epochs=epochs, patience=patience, seed=seed,
                     overwrite=overwrite)

    def report(name: str, result: Any) -> None:
        if quiet:
            return
        console.rule(f"[bold]{name}")
        if name == "evaluate":
            from brcatool.cli.evaluate import print_result

            print_result(result)
        elif name == "ablate":
            from brcatool.cli.ablate import print_summary

            print_summary(result)
        elif name == "prep-expr":
            from brcatool.cli.prep_expr import print_summary

            print_summary(result)
        elif name == "synth":
            console.print("cohort: " + ("reused" if result is None else f"{len(result.slides)} slides, "
                                        f"{len(result.patients)} patients -> {result.root}"))
        elif hasattr(result, "summary") and callable(result.summary):
            console.print(result.summary(), soft_wrap=True)
        else:
            console.print(_one_line(name, result), soft_wrap=True)

    out = run_demo(Path(workdir), cfg, progress=not quiet, on_stage=report)
    if not quiet:
        console.rule("[bold]done")
        times = ", ".join(f"{k} {v:.0f}s" for k, v in out.seconds.items())
        console.print(f"workdir {out.workdir}  ({times})", soft_wrap=True)
    page = out.results.get("report")
    if page is not None:  # the last line, also with --quiet: where the whole study is on one page
        console.print(f"report: {page.path}  (open {page.path.resolve().as_uri()})", soft_wrap=True)


def _one_line(name: str, result: Any) -> str:
    if name == "tile":
        return (f"tile: {result.count('ok')} slides ok, {result.count('no_tissue')} without tissue, "
                f"{result.count('failed')} failed; {result.n_patches} patches "
                f"for {result.n_patients} patients")
    if name == "embed":
        return (f"embed: {result.patches} patches of {result.slides_embedded} slides -> {result.encoder} "
                f"({result.dim}-d, weights {result.weights}) at {result.patches_per_s:.1f} patches/s")
    return f"{name}: done"
