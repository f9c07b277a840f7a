"""Training options that `train` and `ablate` share (one definition of each flag and its help)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

PANEL = "Protocol"

PosWeightOpt = Annotated[str, typer.Option(
    "--pos-weight", help="Class weighting of the loss: auto (neg/pos, balanced for multiclass), none or a "
    "number. Brier and calibration use probabilities with the weighting undone.", rich_help_panel=PANEL)]
OptimizerOpt = Annotated[str, typer.Option("--optimizer", help="adamw | adam.", rich_help_panel=PANEL)]
BagSizeOpt = Annotated[int, typer.Option(
    "--bag-size", help="Patches drawn at random per patient for each training step (attention-MIL "
    "practice; prediction always uses every patch); 0 = all.", rich_help_panel=PANEL)]
SplitOpt = Annotated[str, typer.Option(
    "--split", help="patient (stratified K-fold) | site (no TCGA tissue-source site in both training and "
    "validation; splits-site.json).", rich_help_panel=PANEL)]
SiteColumnOpt = Annotated[str | None, typer.Option(
    "--site-column", help="--split site on a non-TCGA cohort: a column of labels.parquet, or "
    "CLINICAL.tsv:COLUMN.", show_default="TCGA barcode characters 6-7", rich_help_panel=PANEL)]
SlideTypesOpt = Annotated[str, typer.Option(
    "--slide-types", help="TCGA slide types joining a bag: comma-separated DX (diagnostic), TS/BS (frozen).",
    rich_help_panel=PANEL)]
KeepAllSamplesOpt = Annotated[bool, typer.Option(
    "--keep-all-samples", help="Also bag slides of non-tumour TCGA samples (06 metastasis, 11 normal, ...); "
    "default: primary tumour (01) only.", rich_help_panel=PANEL)]
PaperOpt = Annotated[bool, typer.Option(
    "--paper", help="The study's protocol: Adam without weight decay, no pos-weight, mean pooling, "
    "35 patches, 5 folds (options given explicitly still win).", rich_help_panel=PANEL)]


def explicit(ctx: typer.Context) -> set[str]:
    """Parameters the user set (command line, environment or --config), which --paper leaves alone."""
    given = {"COMMANDLINE", "ENVIRONMENT", "DEFAULT_MAP"}  # by name: typer may bring its own click
    return {p.name for p in ctx.command.params
            if p.name and getattr(ctx.get_parameter_source(p.name), "name", None) in given}


def apply_paper(cfg: Any, ctx: typer.Context, paper: bool) -> Any:
    """``cfg`` with the --paper protocol on every option the user did not set."""
    if paper:
        cfg.apply_paper(explicit(ctx))
    return cfg
