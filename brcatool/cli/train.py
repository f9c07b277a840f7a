"""`brcatool train`: cross-validate one fusion model on the saved patient-grouped split."""

from __future__ import annotations

from typing import Annotated

import typer

from brcatool.cli.common import (
    ConfigOpt,
    DaskOpt,
    OverwriteOpt,
    QuietOpt,
    SeedOpt,
    WorkdirOpt,
    console,
    default_workdir,
    fmt_metric,
    report_errors,
)
from brcatool.cli.training_opts import (
    BagSizeOpt,
    KeepAllSamplesOpt,
    OptimizerOpt,
    PaperOpt,
    PosWeightOpt,
    SiteColumnOpt,
    SlideTypesOpt,
    SplitOpt,
    apply_paper,
)

_MODEL = "Model"
_OPT = "Optimisation"
_CV = "Cross-validation"


@report_errors
def train(
    ctx: typer.Context,
    fusion: Annotated[str, typer.Option(
        "--fusion", help="gene | image | concat | late | xattn.", rich_help_panel=_MODEL)] = "xattn",
    aggregator: Annotated[str, typer.Option(
        "--aggregator", help="Patch pooling: mean | abmil (gated attention).",
        rich_help_panel=_MODEL)] = "abmil",
    encoder: Annotated[str | None, typer.Option(
        "--encoder", help="Features of this encoder (features/<encoder>/).",
        show_default="the only one present")] = None,
    hidden: Annotated[int, typer.Option("--hidden", help="Embedding width of both branches.",
                                        rich_help_panel=_MODEL)] = 128,
    dropout: Annotated[float, typer.Option("--dropout", help="Dropout rate.", rich_help_panel=_MODEL)] = 0.25,
    heads: Annotated[int, typer.Option("--heads", help="Cross-attention heads (divide --hidden).",
                                       rich_help_panel=_MODEL)] = 4,
    gene_tokens: Annotated[int, typer.Option("--gene-tokens", help="Gene tokens for xattn.",
                                             rich_help_panel=_MODEL)] = 4,
    xattn_dir: Annotated[str, typer.Option(
        "--xattn-dir", help="gene2img (genes query patches) | img2gene | both.",
        rich_help_panel=_MODEL)] = "gene2img",
    missing: Annotated[str, typer.Option(
        "--missing", help="Patients lacking a modality: drop, or mask (learned missing token).",
        rich_help_panel=_MODEL)] = "drop",
    modality_dropout: Annotated[float, typer.Option(
        "--modality-dropout", help="--missing mask: chance of hiding one modality per training patient.",
        rich_help_panel=_MODEL)] = 0.0,
    epochs: Annotated[int, typer.Option("--epochs", help="Maximum epochs per fold.",
                                        rich_help_panel=_OPT)] = 30,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.", rich_help_panel=_OPT)] = 1e-3,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.",
                                                rich_help_panel=_OPT)] = 1e-2,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Patients per step.",
                                            rich_help_panel=_OPT)] = 32,
    patience: Annotated[int, typer.Option(
        "--patience", help="Early stopping: epochs without inner-validation improvement.",
        rich_help_panel=_OPT)] = 6,
    patch_dropout: Annotated[float, typer.Option(
        "--patch-dropout", help="Fraction of patches hidden per training step.", rich_help_panel=_OPT)] = 0.0,
    threshold: Annotated[str, typer.Option(
        "--threshold", help="Binary decision threshold: a number, or 'tuned' (best F1 on inner validation).",
        rich_help_panel=_OPT)] = "0.5",
    folds: Annotated[int, typer.Option("--folds", help="K of the stratified K-fold split.",
                                       rich_help_panel=_CV)] = 5,
    repeats: Annotated[int, typer.Option("--repeats", help="Repetitions of the K-fold split.",
                                         rich_help_panel=_CV)] = 1,
    val_frac: Annotated[float, typer.Option(
        "--val-frac", help="Share of each training fold held out for early stopping and threshold tuning.",
        rich_help_panel=_CV)] = 0.2,
    pos_weight: PosWeightOpt = "auto",
    optimizer: OptimizerOpt = "adamw",
    bag_size: BagSizeOpt = 0,
    split: SplitOpt = "patient",
    site_column: SiteColumnOpt = None,
    slide_types: SlideTypesOpt = "DX,TS,BS",
    keep_all_samples: KeepAllSamplesOpt = False,
    paper: PaperOpt = False,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda[:N].")] = "auto",
    dask: DaskOpt = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="Run name (folder under runs/).", show_default="<fusion>-<aggregator>-<time>")] = None,
    workdir: WorkdirOpt = default_workdir(),
    config: ConfigOpt = None,
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train a fusion model with patient-grouped cross-validation; writes runs/<name>/."""
    from brcatool.training import TrainConfig, run_train

    cfg = TrainConfig(
        fusion=fusion, aggregator=aggregator, encoder=encoder, folds=folds, repeats=repeats, epochs=epochs,
        lr=lr, weight_decay=weight_decay, batch_size=batch_size, patience=patience, hidden=hidden,
        dropout=dropout, heads=heads, gene_tokens=gene_tokens, xattn_dir=xattn_dir,
        patch_dropout=patch_dropout, pos_weight=pos_weight, missing=missing,
        modality_dropout=modality_dropout, threshold=threshold, val_frac=val_frac, device=device, name=name,
        seed=seed, overwrite=overwrite, optimizer=optimizer, bag_size=bag_size, split=split,
        site_column=site_column, slide_types=slide_types, keep_all_samples=keep_all_samples, dask=dask,
    )
    apply_paper(cfg, ctx, paper)
    result = run_train(workdir, cfg, progress=not quiet)
    if quiet:
        return
    from rich.table import Table

    if result.skipped:
        console.print(f"[yellow]run {result.name!r} already exists with these parameters; reusing it[/]")
    else:
        table = Table(title=f"{result.name} ({result.task}: {' vs '.join(result.classes)})")
        for col in ("repeat", "fold", "n", "F1", "PR-AUC", "ROC-AUC", "accuracy", "epoch"):
            table.add_column(col, justify="right")
        for f in result.per_fold:
            scores = (fmt_metric(f[k]) for k in ("f1", "pr_auc", "roc_auc", "accuracy"))
            table.add_row(str(f["repeat"]), str(f["fold"]), str(f["n"]), *scores, str(f["best_epoch"]))
        m = result.metrics
        table.add_row("pooled", "", str(result.n_patients),
                      *(fmt_metric(m[k]) for k in ("f1", "pr_auc", "roc_auc", "accuracy")), "", style="bold")
        console.print(table)
    console.print(result.summary(), soft_wrap=True)
    if result.left_out:
        gone = ", ".join(f"{n} {why}" for why, n in sorted(result.left_out.items()))
        console.print(f"slides left out of the bags: {gone} (see --slide-types, --keep-all-samples)",
                      soft_wrap=True)
