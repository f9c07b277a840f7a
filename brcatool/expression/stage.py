"""The prep-expr stage: expression.parquet, labels.parquet, recipe.json and cohort.parquet.

Only label-free, per-value transforms are applied here (log2(x+1), dropping mostly-zero genes,
an optional gene panel). Everything fitted on data (gene selection, IQR bounds, z-score) lives
in :class:`brcatool.expression.recipe.Recipe`, which ``train`` fits on each training fold only, so
no statistic of a validation patient leaks into training (the paper's code scaled all samples
before splitting).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from brcatool.artifacts import Manifest, Workdir, check_params, write_json, write_parquet
from brcatool.errors import InputError
from brcatool.expression.genes import load_panel, panel_columns
from brcatool.expression.recipe import Recipe
from brcatool.expression.sources import FORMATS, ReadOptions, input_fingerprint, read_source
from brcatool.expression.sources.base import GDC_VALUES, GENE_IDS
from brcatool.expression.transforms import (
    DUPLICATE_POLICIES,
    clean_genes,
    decide_log,
    log2p1,
    select_samples,
    zero_fraction,
)
from brcatool.outputs import output_fingerprint, replacing
from brcatool.tasks import prepare_labels


@dataclass
class PrepExprConfig:
    """Options of ``brcatool prep-expr`` (defaults = the CLI's)."""

    expression: Path | None = None
    clinical: Path | None = None
    format: Literal["auto", "gdc", "cbioportal", "xena", "matrix"] = "auto"
    sample_sheet: Path | None = None
    gdc_value: str = GDC_VALUES[0]
    gene_names: bool = False
    gene_id: Literal["symbol", "entrez"] = "symbol"
    duplicate_genes: Literal["first", "mean", "max-variance", "error"] = "first"
    samples_as_rows: bool | None = None
    id_column: str | None = None
    label_column: str | None = None
    task: str | None = None
    positive: list[str] = field(default_factory=list)
    log: Literal["auto", "yes", "no"] = "auto"
    max_zero_frac: float = 0.2
    genes: str | None = None
    top_genes: int | None = None
    iqr_k: float = 1.5
    iqr_mode: Literal["clip", "drop", "none"] = "clip"
    drop_frac: float = 0.1
    keep_all_samples: bool = False
    unknown_labels: Literal["warn", "error"] = "warn"


@dataclass
class PrepExprResult:
    """What prep-expr produced; ``alignment`` holds the counts of the cohort table."""

    workdir: Path
    outputs: dict[str, Path]
    task: str | None
    classes: list[str]
    class_counts: dict[str, int]
    alignment: dict[str, int]
    counts: dict[str, Any]
    warnings: list[str]
    skipped: bool = False
    seconds: float = 0.0


def _check_config(cfg: PrepExprConfig) -> Recipe:
    if cfg.expression is None:
        raise InputError("no expression table given", fix="pass --expression FILE")
    if cfg.log not in ("auto", "yes", "no"):
        raise InputError(f"--log must be auto, yes or no, got {cfg.log!r}")
    if not 0 <= cfg.max_zero_frac <= 1:
        raise InputError(f"--max-zero-frac must be between 0 and 1, got {cfg.max_zero_frac}")
    if cfg.unknown_labels not in ("warn", "error"):
        raise InputError(f"--unknown-labels must be warn or error, got {cfg.unknown_labels!r}")
    for flag, value, allowed in (("--format", cfg.format, FORMATS),
                                 ("--gdc-value", cfg.gdc_value, GDC_VALUES),
                                 ("--gene-id", cfg.gene_id, GENE_IDS),
                                 ("--duplicate-genes", cfg.duplicate_genes, DUPLICATE_POLICIES)):
        if value not in allowed:
            raise InputError(f"{flag} must be one of {', '.join(allowed)}, got {value!r}")
    return Recipe(top_genes=cfg.top_genes, iqr_k=cfg.iqr_k, iqr_mode=cfg.iqr_mode, drop_frac=cfg.drop_frac)


def read_options(cfg: PrepExprConfig) -> ReadOptions:
    """The source options of a config (what the source readers see)."""
    return ReadOptions(samples_as_rows=cfg.samples_as_rows, sample_sheet=cfg.sample_sheet,
                       gdc_value=cfg.gdc_value, gene_names=cfg.gene_names, gene_id=cfg.gene_id)


def prepare_expression(cfg: PrepExprConfig, warnings: list[str]):
    """Read (any registered source layout) and apply the fixed transforms.

    Returns (patients, genes, float32 (genes, patients) C-order values, counts); rows and
    columns are picked by index first, so the big matrix is copied once. ``counts["dropped"]``
    holds every row (gene), column (sample), file and cell left out or filled, with counts.
    """
    path = Path(cfg.expression)  # type: ignore[arg-type]
    table, fmt = read_source(path, cfg.format, read_options(cfg))
    table = clean_genes(table, duplicates=cfg.duplicate_genes)
    warnings.extend(f"{path.name}: {n}" for n in table.notes)
    rows, patients, report = select_samples(table.samples, keep_all=cfg.keep_all_samples)
    if report["dropped_not_primary"]:
        warnings.append(f"{path.name}: dropped {report['dropped_not_primary']} non-primary sample(s) "
                        f"(types {report['dropped_types']}; --keep-all-samples keeps them)")
    if report["dropped_duplicates"]:
        warnings.append(f"{path.name}: {report['patients_with_duplicates']} patient(s) with several samples; "
                        f"kept one each (type 01, then lowest type/vial/barcode), dropped "
                        f"{report['dropped_duplicates']}")
    if not rows:
        raise InputError("no samples left after keeping primary tumours (type 01)", path=path,
                         fix="pass --keep-all-samples")
    genes = table.genes
    if not genes:
        raise InputError("no gene ids left (every row has an empty or non-gene id)", path=path,
                         fix="check the first column (or --gene-id)")
    cols = np.arange(len(genes))
    counts: dict[str, Any] = {"format": fmt, "layout": table.layout, "orientation": table.orientation,
                              "samples_read": len(table.samples), "genes_read": len(genes),
                              **{f"samples_{k}": v for k, v in report.items()
                                 if k not in ("samples", "dropped_types")}}
    d = table.dropped
    dropped: dict[str, Any] = {
        "gene_rows": {k: d.get(k, 0) for k in ("empty_gene_ids", "non_gene_rows", "duplicate_gene_rows")},
        "duplicate_genes": d.get("duplicate_genes", {}),
        "sample_columns": {"not_primary": report["dropped_not_primary"], "types": report["dropped_types"],
                           "second_sample_of_a_patient": report["dropped_duplicates"]},
    }
    files = {k.removeprefix("gdc_"): v for k, v in d.items() if k.startswith("gdc_")}
    if files:
        dropped["gdc_files"] = files
    if d.get("no_final_line_end"):
        dropped["no_final_line_end"] = True  # maybe cut short: said in the warnings
    if cfg.genes:
        idx, missing = panel_columns(genes, load_panel(cfg.genes))
        if not idx:
            raise InputError(f"gene panel {cfg.genes!r} matched none of the {len(genes)} genes "
                             f"(e.g. {genes[:3]})", path=path,
                             fix="pass a panel file with the same kind of ids as the table")
        if missing:
            warnings.append(f"gene panel: {len(missing)} gene(s) not in the table, e.g. {missing[:5]}")
        dropped["gene_rows"]["not_in_panel"] = len(genes) - len(idx)
        cols = np.asarray(idx)
    V = table.values  # (samples, genes) view
    zf = zero_fraction(V, rows, cols if len(cols) < len(genes) else None)
    keep = zf <= cfg.max_zero_frac
    counts["genes_dropped_zero"] = dropped["gene_rows"]["zero_or_missing"] = int((~keep).sum())
    if not keep.any():
        raise InputError(f"all {len(cols)} genes are zero or missing in more than {cfg.max_zero_frac:g} "
                         "of samples", path=path, fix="raise --max-zero-frac")
    cols = cols[keep]
    G = V.T[np.ix_(cols, np.asarray(rows))]  # the one copy: (genes, patients), C-order
    logged, scale = decide_log(G, cfg.log, path=path, hint=table.scale)
    if logged:
        G = log2p1(G, inplace=True)
    # the float64 sum of finite values is finite: only look for NaNs cell by cell when it is not
    nan = np.isnan(G) if not np.isfinite(G.sum(dtype=np.float64)) else None
    n_nan = 0 if nan is None else int(nan.sum())
    if n_nan:
        n_genes = int(nan.any(axis=1).sum())
        warnings.append(f"{path.name}: {n_nan} missing value(s) in {n_genes} kept gene(s) set to 0 "
                        f"{'after the log' if logged else 'on the input scale'}")
        G[nan] = 0.0
        dropped["missing_cells_set_to_0"] = {"cells": n_nan, "genes": n_genes}
    counts.update(log_applied=logged, input_scale=scale, genes_out=len(cols),
                  patients_expression=len(patients), missing_filled=n_nan, dropped=dropped)
    return patients, [genes[i] for i in cols], G, counts


def write_expression(path: Path, patients: Sequence[str], genes: Sequence[str], G: np.ndarray) -> Path:
    """expression.parquet from (genes, patients) values: zero-copy Arrow columns, one row group.

    Snappy and no dictionary pages or statistics on the gene columns: zstd + those cost seconds
    on 20,000 float columns for ~15 % smaller files.
    """
    import pyarrow as pa

    G = np.ascontiguousarray(G, dtype=np.float32)
    flat, n = pa.array(G.reshape(-1)), G.shape[1]  # zero-copy; a slice per gene is cheaper than an array
    arrays = [pa.array(list(patients), pa.string())] + [flat.slice(i * n, n) for i in range(G.shape[0])]
    table = pa.Table.from_arrays(arrays, names=["patient_id", *genes])
    return write_parquet(table, path, schema="expression", compression="snappy",
                         use_dictionary=["patient_id"], write_statistics=["patient_id"])


def _slide_patients(wd: Workdir) -> tuple[set[str], set[str]]:
    """Patients with any slide and with at least one slide of status ok."""
    from brcatool.artifacts import read_parquet

    if not wd.slides_table.exists():
        return set(), set()
    slides = read_parquet(wd.slides_table, schema="slides", made_by="tile")
    ok = slides.filter(slides["status"] == "ok")
    return set(slides["patient_id"].to_list()), set(ok["patient_id"].to_list())


def build_cohort(expr: set[str], labelled: set[str], clinical: set[str], wd: Workdir):
    """cohort.parquet rows: included = has_label & (has_expression | has_slides)."""
    import polars as pl

    any_slide, ok_slide = _slide_patients(wd)
    ids = sorted(expr | labelled | clinical | any_slide)
    has_e = [p in expr for p in ids]
    has_s = [p in ok_slide for p in ids]
    has_l = [p in labelled for p in ids]
    inc = [lab and (e or s) for e, s, lab in zip(has_e, has_s, has_l, strict=True)]
    return pl.DataFrame({"patient_id": ids, "has_expression": has_e, "has_slides": has_s,
                         "has_label": has_l, "included": inc},
                        schema={"patient_id": pl.String, "has_expression": pl.Boolean,
                                "has_slides": pl.Boolean, "has_label": pl.Boolean, "included": pl.Boolean})


def alignment_counts(cohort) -> dict[str, int]:
    """Counts printed as the alignment table."""
    e, s, lab = cohort["has_expression"], cohort["has_slides"], cohort["has_label"]
    return {"patients": cohort.height, "expression": int(e.sum()), "slides": int(s.sum()),
            "label": int(lab.sum()), "expression + label": int((e & lab).sum()),
            "slides + label": int((s & lab).sum()), "expression + slides + label": int((e & s & lab).sum()),
            "included": int(cohort["included"].sum())}


class _NoBar:
    """Stand-in for a disabled rich progress bar (importing rich costs ~0.3 s)."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None


def _progress_bar(progress: bool) -> Any:
    if not progress:
        return _NoBar()
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True)


def run_prep_expr(workdir: Path | Workdir, cfg: PrepExprConfig, *, progress: bool = True,
                  overwrite: bool = False) -> PrepExprResult:
    """Write expression.parquet, labels.parquet, recipe.json and cohort.parquet for one cohort.

    Every input is read and checked before the first write; the manifest is written last, so an
    interrupted run never looks finished. Same parameters and inputs: only the cohort table is
    refreshed (slides may have been tiled since).
    """
    import polars as pl

    from brcatool.artifacts import read_json, read_parquet
    from brcatool.config import to_dict, write_yaml

    t0 = time.perf_counter()
    wd = workdir if isinstance(workdir, Workdir) else Workdir(Path(workdir))
    recipe = _check_config(cfg)
    manifest_path = wd.stage_manifest("prep-expr")
    outputs = {"expression": wd.expression_table, "labels": wd.labels_table, "recipe": wd.recipe_settings,
               "cohort": wd.cohort_table, "manifest": manifest_path}
    params = to_dict(cfg)
    params["inputs"] = {k: {n: v for n, v in input_fingerprint(p).items() if n != "path"} for k, p in
                        (("expression", cfg.expression), ("clinical", cfg.clinical),
                         ("sample_sheet", cfg.sample_sheet)) if p is not None}
    if check_params(manifest_path, params, overwrite=overwrite, what="prep-expr outputs") and all(
            p.exists() for p in outputs.values()):
        old = read_json(manifest_path)
        prev = read_parquet(wd.cohort_table, schema="cohort", made_by="prep-expr")
        cohort = build_cohort(set(prev.filter(pl.col("has_expression"))["patient_id"].to_list()),
                              set(prev.filter(pl.col("has_label"))["patient_id"].to_list()),
                              set(prev["patient_id"].to_list()), wd)
        if not cohort.equals(prev):
            write_parquet(cohort, wd.cohort_table, schema="cohort")
        return PrepExprResult(wd.root, outputs, old.get("task"), old.get("classes", []),
                              old.get("class_counts", {}), alignment_counts(cohort), old.get("counts", {}),
                              old.get("warnings", []), skipped=True, seconds=time.perf_counter() - t0)

    warnings: list[str] = []
    with _progress_bar(progress) as bar:
        step = bar.add_task("prep-expr: reading expression", total=4)
        patients, genes, G, counts = prepare_expression(cfg, warnings)
        bar.update(step, advance=1, description="prep-expr: reading labels")
        manifest = Manifest("prep-expr", params)
        manifest.inputs.append(input_fingerprint(cfg.expression))  # type: ignore[arg-type]
        if cfg.sample_sheet is not None:
            manifest.add_input(cfg.sample_sheet)
        if cfg.clinical is not None:
            manifest.add_input(cfg.clinical)
            labels, task, clinical = prepare_labels(
                Path(cfg.clinical), patients, warnings, id_column=cfg.id_column,
                label_column=cfg.label_column, task=cfg.task, positive=cfg.positive,
                unknown=cfg.unknown_labels, report=counts["dropped"].setdefault("label_rows", {}))
            task_name, classes = task.name, list(task.classes)
        else:
            warnings.append("no --clinical table given: labels.parquet is empty and nobody is included")
            labels = pl.DataFrame(schema={"patient_id": pl.String, "label": pl.String, "target": pl.Int64,
                                          "task": pl.String})
            task_name, classes, clinical = None, [], []
        if recipe.top_genes is not None and recipe.top_genes > len(genes):
            warnings.append(f"--top-genes {recipe.top_genes} > the {len(genes)} genes kept; all are used")
        cohort = build_cohort(set(patients), set(labels["patient_id"].to_list()), set(clinical), wd)
        class_counts = {c: int((labels["target"] == i).sum()) for i, c in enumerate(classes)}
        bar.update(step, advance=1, description="prep-expr: writing tables")
        # the new tables are built beside the old ones and replace them together, manifest last: a
        # failure (a full disk) keeps the old outputs whole
        finals = [wd.expression_table, wd.labels_table, wd.recipe_settings, wd.cohort_table,
                  manifest_path.with_suffix(".yaml"), manifest_path]
        with replacing(wd, finals, tag="prep-expr") as new:
            write_expression(new.expression_table, patients, genes, G)
            write_parquet(labels, new.labels_table, schema="labels")
            write_json(new.recipe_settings, recipe.settings())
            write_parquet(cohort, new.cohort_table, schema="cohort")
            write_yaml(cfg, new.stage_manifest("prep-expr").with_suffix(".yaml"))
            alignment = alignment_counts(cohort)
            counts.update(labelled=labels.height, included=alignment["included"])
            manifest.write(new.stage_manifest("prep-expr"), counts=counts, task=task_name, classes=classes,
                           source={"format": counts["format"], "layout": counts["layout"],
                                   "input_scale": counts["input_scale"],
                                   "log_applied": counts["log_applied"]},
                           dropped=counts["dropped"],
                           class_counts=class_counts, alignment=alignment, warnings=warnings,
                           fingerprint=output_fingerprint(files=[new.expression_table, new.labels_table,
                                                                         new.recipe_settings]))
        bar.update(step, advance=2)
    return PrepExprResult(wd.root, outputs, task_name, classes, class_counts, alignment, counts, warnings,
                          seconds=time.perf_counter() - t0)
