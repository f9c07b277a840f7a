"""`brcatool ablate`: every fusion on the same split, evaluated, in one table."""

from __future__ import annotations

from typing import Annotated, Any

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

_TRAIN = "Training (every model)"


def _names(value: str) -> list[str]:
    """``gene,image`` (a YAML list arrives joined the same way, see ``--config``)."""
    return [v.strip() for v in value.split(",") if v.strip()]


@report_errors
def ablate(
    ctx: typer.Context,
    fusions: Annotated[str, typer.Option(
        "--fusions", help="Comma-separated fusions to compare.")] = "gene,image,concat,late,xattn",
    aggregators: Annotated[str, typer.Option(
        "--aggregators", help="Comma-separated patch aggregators (each image model once per aggregator).")
    ] = "abmil",
    sanity: Annotated[bool, typer.Option(
        "--sanity", help="Also re-run the chosen fusion with permuted labels and with shuffled images, "
        "and re-fit it on --permutations label permutations (a null distribution and p-value).")
    ] = False,
    sanity_fusion: Annotated[str | None, typer.Option(
        "--sanity-fusion", help="Fusion for --sanity.",
        show_default="xattn if compared, else the last")] = None,
    permutations: Annotated[int, typer.Option(
        "--permutations", help="--sanity: label permutations re-fitted for the null distribution and the "
        "empirical p-value of the real score (0 = none).")] = 20,
    name: Annotated[str, typer.Option("--name", help="Ablation name (folder under ablations/).")] = "default",
    bootstrap: Annotated[int, typer.Option(
        "--bootstrap", help="Patient-level bootstrap resamples for the 95 % CIs.")] = 1000,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write the ablation bar chart.")] = True,
    run_plots: Annotated[bool, typer.Option(
        "--run-plots/--no-run-plots", help="Also write each model's evaluate figures.")] = True,
    epochs: Annotated[int, typer.Option("--epochs", help="Maximum epochs per fold.",
                                        rich_help_panel=_TRAIN)] = 30,
    folds: Annotated[int, typer.Option("--folds", help="K of the saved K-fold split.",
                                       rich_help_panel=_TRAIN)] = 5,
    repeats: Annotated[int, typer.Option("--repeats", help="Repetitions of the split.",
                                         rich_help_panel=_TRAIN)] = 1,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.", rich_help_panel=_TRAIN)] = 1e-3,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.",
                                                rich_help_panel=_TRAIN)] = 1e-2,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Patients per step.",
                                            rich_help_panel=_TRAIN)] = 32,
    patience: Annotated[int, typer.Option("--patience", help="Early-stopping patience.",
                                          rich_help_panel=_TRAIN)] = 6,
    hidden: Annotated[int, typer.Option("--hidden", help="Embedding width.", rich_help_panel=_TRAIN)] = 128,
    heads: Annotated[int, typer.Option("--heads", help="Cross-attention heads.", rich_help_panel=_TRAIN)] = 4,
    dropout: Annotated[float, typer.Option("--dropout", help="Dropout rate.", rich_help_panel=_TRAIN)] = 0.25,
    missing: Annotated[str, typer.Option("--missing", help="drop | mask (patients lacking a modality).",
                                         rich_help_panel=_TRAIN)] = "drop",
    threshold: Annotated[str, typer.Option("--threshold", help="Binary threshold: a number or 'tuned'.",
                                           rich_help_panel=_TRAIN)] = "0.5",
    encoder: Annotated[str | None, typer.Option("--encoder", help="Features of this encoder.",
                                                show_default="the only one present")] = None,
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
    workdir: WorkdirOpt = default_workdir(),
    config: ConfigOpt = None,
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Compare gene, image, concat, late and xattn on one split; writes ablations/<name>/."""
    from brcatool.ablation import AblateConfig, run_ablate

    cfg = AblateConfig(
        fusions=_names(fusions), aggregators=_names(aggregators), sanity=sanity, sanity_fusion=sanity_fusion,
        permutations=permutations,
        name=name, encoder=encoder, folds=folds, repeats=repeats, epochs=epochs, lr=lr,
        weight_decay=weight_decay, batch_size=batch_size,
        patience=patience, hidden=hidden, dropout=dropout, heads=heads, missing=missing, threshold=threshold,
        bootstrap=bootstrap, plots=plots, run_plots=run_plots, device=device, seed=seed, overwrite=overwrite,
        pos_weight=pos_weight, optimizer=optimizer, bag_size=bag_size, split=split, site_column=site_column,
        slide_types=slide_types, keep_all_samples=keep_all_samples, dask=dask)
    apply_paper(cfg, ctx, paper)
    result = run_ablate(workdir, cfg, progress=not quiet)
    if not quiet:
        print_summary(result)


def print_summary(result: Any) -> None:
    """The ablation table (also used by `brcatool demo`): pooled values [95 % CI] on the common patients."""
    from rich.table import Table

    from brcatool.ablation import LABELS

    shown = ("f1", "pr_auc", "roc_auc")  # fits 80 columns; MCC and the fold mean ± sd in summary.md
    ref = result.reference
    table = Table(title=f"Ablation {result.name}: pooled out-of-fold [95 % CI] on the same "
                        f"{result.n_common} patients")
    table.add_column("model")
    for m in shown:
        table.add_column(LABELS[m], justify="right")
    if ref:
        table.add_column(f"Δ PR-AUC\nvs {ref} (p)", justify="right")
    for r in result.summary.to_dicts():
        cells = [f"{fmt_metric(r[f'{m}_pooled'])}\n"  # two lines: fits 80 columns
                 f"[dim][{fmt_metric(r[f'{m}_ci_low'], 2)},{fmt_metric(r[f'{m}_ci_high'], 2)}][/]"
                 for m in shown]
        if ref:
            p = r["pr_auc_diff_p"]
            cells.append(f"{fmt_metric(r['pr_auc_diff_pooled'], sign=True)}\n"
                         f"[dim]p {fmt_metric(p) if p == p else '–'}[/]")
        table.add_row(r["model"] if r["kind"] == "model" else f"[italic]{r['model']}[/]", *cells)
    console.print(table)
    extra = "".join(f", {p.name}" for p in result.plots)
    console.print(f"summary: {result.out_dir / 'summary.md'} (+ summary.parquet{extra}; fold mean ± sd, "
                  "paired CIs and p-values there)", soft_wrap=True)
    for m, v in (result.null.get("metrics") or {}).items():
        if m in ("roc_auc", "pr_auc"):
            console.print(f"label-permutation null ({result.null['permutations']} permutations): {LABELS[m]} "
                          f"{fmt_metric(v['real'])} vs null mean {fmt_metric(v['null_mean'])}, "
                          f"p = {fmt_metric(v['p'])}", soft_wrap=True)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", soft_wrap=True)
