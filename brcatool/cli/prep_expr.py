"""`brcatool prep-expr`: expression table, labels and cohort alignment for one cohort."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from brcatool.cli.common import (
    ConfigOpt,
    OverwriteOpt,
    QuietOpt,
    WorkdirOpt,
    console,
    default_workdir,
    err_console,
    report_errors,
)

_RECIPE = "Recipe (fitted later by train on each training fold)"
_SOURCE = "Source layout (GDC, cBioPortal, UCSC Xena, any matrix)"


@report_errors
def prep_expr(
    expression: Annotated[Path, typer.Option(
        "--expression",
        help="Expression: a GDC STAR-count download folder, a cBioPortal/Xena matrix, or any CSV/TSV "
             "(.gz ok)/Parquet table (default genes x samples: first column gene ids).")],
    clinical: Annotated[Path | None, typer.Option(
        "--clinical", dir_okay=False,
        help="Clinical table with a patient id and a label column (cBioPortal data_clinical_*.txt, "
             "Xena BRCA_clinicalMatrix, TCGAbiolinks/PanCancer PAM50 tables, any CSV/TSV).")] = None,
    format: Annotated[str, typer.Option(
        "--format", help="auto | gdc | cbioportal | xena | matrix (auto: detected from the folder/header).",
        rich_help_panel=_SOURCE)] = "auto",
    sample_sheet: Annotated[Path | None, typer.Option(
        "--sample-sheet", dir_okay=False, help="GDC: gdc_sample_sheet.<date>.tsv mapping files to samples.",
        rich_help_panel=_SOURCE, show_default="the gdc_sample_sheet*.tsv in or beside the folder")] = None,
    gdc_value: Annotated[str, typer.Option(
        "--gdc-value", help="GDC: the STAR column to read: tpm_unstranded | fpkm_uq_unstranded | "
                            "fpkm_unstranded | unstranded (raw counts) | stranded_first | stranded_second.",
        rich_help_panel=_SOURCE)] = "tpm_unstranded",
    gene_names: Annotated[bool, typer.Option(
        "--gene-names", help="GDC: use gene_name (symbols) instead of Ensembl gene_id.",
        rich_help_panel=_SOURCE)] = False,
    gene_id: Annotated[str, typer.Option(
        "--gene-id", help="cBioPortal: symbol (Hugo_Symbol; rows without one dropped) or entrez.",
        rich_help_panel=_SOURCE)] = "symbol",
    duplicate_genes: Annotated[str, typer.Option(
        "--duplicate-genes", help="A gene id in several rows: first (row in file order), mean, max-variance "
                                  "or error. Always reported with counts.",
        rich_help_panel=_SOURCE)] = "first",
    samples_as_rows: Annotated[bool | None, typer.Option(
        "--samples-as-rows/--genes-as-rows",
        help="Orientation of --expression; detected from the ids when not given.",
        show_default="detect")] = None,
    id_column: Annotated[str | None, typer.Option(
        "--id-column", help="Patient id column of --clinical.",
        show_default="detect: patient_id, bcr_patient_barcode, PATIENT, Sample ID")] = None,
    label_column: Annotated[str | None, typer.Option(
        "--label-column", help="Label column of --clinical.",
        show_default="detect: PAM50, Subtype, TCGA Subtype, BRCA_Subtype_PAM50")] = None,
    task: Annotated[str | None, typer.Option(
        "--task", help="luminal-vs-basalher2 | pam50 | generic.",
        show_default="luminal-vs-basalher2 for PAM50 labels, else generic")] = None,
    positive: Annotated[list[str] | None, typer.Option(
        "--positive", help="Generic task: label value(s) of class 1 (repeat or comma-separate).")] = None,
    log: Annotated[str, typer.Option(
        "--log", help="log2(x+1): auto (raw values only; logged and z-scored input is recognised and "
                      "left as is), yes or no.")] = "auto",
    max_zero_frac: Annotated[float, typer.Option(
        "--max-zero-frac", help="Drop genes zero or missing in more than this fraction of samples.")] = 0.2,
    genes: Annotated[str | None, typer.Option(
        "--genes", help="Gene panel: 'pam50' or a file with one gene id per line.")] = None,
    top_genes: Annotated[int | None, typer.Option(
        "--top-genes", help="Keep the k most variable genes of each training fold.",
        rich_help_panel=_RECIPE, show_default="all")] = None,
    iqr_k: Annotated[float, typer.Option(
        "--iqr-k", help="IQR fence: outside [Q1 - k*IQR, Q3 + k*IQR] is an outlier.",
        rich_help_panel=_RECIPE)] = 1.5,
    iqr_mode: Annotated[str, typer.Option(
        "--iqr-mode", help="clip values to the fences, drop training samples with many outliers, or none.",
        rich_help_panel=_RECIPE)] = "clip",
    drop_frac: Annotated[float, typer.Option(
        "--drop-frac", help="--iqr-mode drop: drop training samples with more outlying genes than this.",
        rich_help_panel=_RECIPE)] = 0.1,
    keep_all_samples: Annotated[bool, typer.Option(
        "--keep-all-samples", help="Keep every TCGA sample type, not only primary tumours (01).")] = False,
    unknown_labels: Annotated[str, typer.Option(
        "--unknown-labels", help="Unknown label values: warn (leave unlabelled) or error.")] = "warn",
    workdir: WorkdirOpt = default_workdir(),
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Prepare expression, labels and the cohort alignment (log2, gene filter; scaling is per fold)."""
    from brcatool.expression import PrepExprConfig, run_prep_expr

    pos = [v.strip() for item in positive or [] for v in item.split(",") if v.strip()]
    cfg = PrepExprConfig(
        expression=expression, clinical=clinical, format=format, sample_sheet=sample_sheet,  # type: ignore[arg-type]
        gdc_value=gdc_value, gene_names=gene_names, gene_id=gene_id,  # type: ignore[arg-type]
        duplicate_genes=duplicate_genes,  # type: ignore[arg-type]
        samples_as_rows=samples_as_rows, id_column=id_column,
        label_column=label_column, task=task, positive=pos, log=log,  # type: ignore[arg-type]
        max_zero_frac=max_zero_frac, genes=genes, top_genes=top_genes, iqr_k=iqr_k,
        iqr_mode=iqr_mode, drop_frac=drop_frac, keep_all_samples=keep_all_samples,  # type: ignore[arg-type]
        unknown_labels=unknown_labels,  # type: ignore[arg-type]
    )
    result = run_prep_expr(workdir, cfg, progress=not quiet, overwrite=overwrite)
    for line in result.warnings:
        err_console.print(f"[yellow]warning:[/] {line}", soft_wrap=True)
    if not quiet:
        print_summary(result)


def print_summary(result: Any) -> None:
    """The alignment table, the class counts and one line about the expression table (also for demo)."""
    from rich.table import Table

    if result.skipped:
        console.print(f"prep-expr: outputs in {result.workdir} are up to date (same parameters); "
                      "cohort table refreshed")
    c = result.counts
    table = Table(title=f"Cohort alignment ({result.workdir})", show_edge=False)
    table.add_column("patients with")
    table.add_column("count", justify="right")
    for name, n in result.alignment.items():
        style = "bold" if name == "included" else None
        table.add_row(name, str(n), style=style)
    console.print(table)
    if result.classes:
        classes = Table(title=f"Task {result.task}", show_edge=False)
        classes.add_column("target", justify="right")
        classes.add_column("class")
        classes.add_column("patients", justify="right")
        for i, name in enumerate(result.classes):
            classes.add_row(str(i), name, str(result.class_counts.get(name, 0)))
        console.print(classes)
    if c.get("layout"):
        console.print(f"read: {c['layout']}", soft_wrap=True)
    scale = c.get("input_scale")
    console.print(
        f"expression: {c.get('samples_read')} samples ({c.get('orientation')}) -> "
        f"{c.get('patients_expression')} patients; {c.get('genes_read')} genes -> {c.get('genes_out')} "
        f"(log2(x+1) {'applied' if c.get('log_applied') else 'not applied'}"
        f"{f'; input: {scale}' if scale else ''}); {result.seconds:.1f} s")
