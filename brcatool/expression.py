"""Expression tables, labels and cohort alignment (the prep-expr stage), and the per-fold recipe.

Only label-free, per-value transforms are applied here (log2(x+1), dropping mostly-zero genes,
an optional gene panel). Everything fitted on data (gene selection, IQR bounds, z-score) lives
in :class:`brcatool.recipe.Recipe`, which ``train`` fits on each training fold only, so no statistic of a
validation patient leaks into training (the paper's code scaled all samples before splitting).
"""

from __future__ import annotations

import csv
import gzip
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from brcatool.artifacts import Manifest, Workdir, check_params, fingerprint, write_json, write_parquet
from brcatool.errors import InputError
from brcatool.recipe import Recipe  # re-exported: callers of the stage module use it

#: The 50 PAM50 genes (Parker et al. 2009), current HGNC symbols.
PAM50_GENES: tuple[str, ...] = (
    "ACTR3B", "ANLN", "BAG1", "BCL2", "BIRC5", "BLVRA", "CCNB1", "CCNE1", "CDC20", "CDC6",
    "CDH3", "CENPF", "CEP55", "CXXC5", "EGFR", "ERBB2", "ESR1", "EXO1", "FGFR4", "FOXA1",
    "FOXC1", "GPR160", "GRB7", "KIF2C", "KRT14", "KRT17", "KRT5", "MAPT", "MDM2", "MELK",
    "MIA", "MKI67", "MLPH", "MMP11", "MYBL2", "MYC", "NAT1", "NDC80", "NUF2", "ORC6",
    "PGR", "PHGDH", "PTTG1", "RRM2", "SFRP1", "SLC39A6", "TMEM45B", "TYMS", "UBE2C", "UBE2T",
)
#: Older symbols of PAM50 genes still found in TCGA tables.
GENE_ALIASES = {"ORC6L": "ORC6", "KNTC2": "NDC80", "CDCA1": "NUF2"}

NULL_VALUES = ["", "NA", "N/A", "na", "nan", "NaN", "null", "NULL", "None"]
#: Annotation columns that sit beside the gene id in GDC/cBioPortal matrices (not samples).
ANNOTATION_COLUMNS = {"entrez_gene_id", "gene_name", "gene_type", "description", "name"}
LOGGED_MAX = 50.0  # log2-scale RNA-seq never exceeds ~30; counts/TPM do

_TCGA = re.compile(r"^TCGA[-.]([A-Z0-9]{2})[-.]([A-Z0-9]{4})(?:[-.](\d{2})([A-Z])?)?", re.IGNORECASE)
_ENSEMBL = re.compile(r"^(ENS[A-Z]*[GT]\d{11})\.\d+(_PAR_Y)?$")
_GSM = re.compile(r"^GSM\d+$", re.IGNORECASE)
_NOT_GENES = re.compile(r"^(__|N_(unmapped|multimapping|noFeature|ambiguous)$)")


# --------------------------------------------------------------------------- ids
def parse_barcode(sample: str) -> tuple[str, str | None, str] | None:
    """(patient, sample type, vial) of a TCGA barcode, or None for other ids."""
    m = _TCGA.match(sample.strip())
    if not m:
        return None
    patient = f"TCGA-{m.group(1)}-{m.group(2)}".upper()
    return patient, m.group(3), (m.group(4) or "").upper()


def patient_of(sample: str) -> str:
    """Patient id: first 12 characters of a TCGA barcode (dots read as dashes), else the id itself."""
    parsed = parse_barcode(sample)
    return parsed[0] if parsed else sample.strip()


def clean_gene_id(gene: str) -> str:
    """``ENSG00000141510.16`` -> ``ENSG00000141510``; ``TP53|7157`` -> ``TP53``; symbols as they are."""
    gene = gene.strip()
    if "|" in gene:
        symbol = gene.split("|", 1)[0]
        if symbol and symbol != "?":
            gene = symbol
    m = _ENSEMBL.match(gene)
    return m.group(1) + (m.group(2) or "") if m else gene


def _looks_like_samples(ids: Sequence[str]) -> float:
    ids = [i for i in ids[:500] if i]
    return sum(bool(_TCGA.match(i) or _GSM.match(i)) for i in ids) / max(len(ids), 1)


def _looks_like_genes(ids: Sequence[str]) -> float:
    ids = [i for i in ids[:5000] if i]
    pam = set(PAM50_GENES)
    return sum(bool(i.startswith("ENS") or clean_gene_id(i).upper() in pam) for i in ids) / max(len(ids), 1)


# --------------------------------------------------------------------------- readers
def _format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return "csv" if name.endswith(".csv") else "tsv"


def _header(path: Path, sep: str) -> tuple[list[str], bool]:
    """Column names, and whether ``#`` comment lines come first (cBioPortal style)."""
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    comments = False
    try:
        with opener(path, "rt", newline="") as fh:
            for line in fh:
                if line.startswith("#"):
                    comments = True
                elif line.strip():
                    return next(csv.reader([line], delimiter=sep)), comments
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise InputError(f"cannot read as text ({exc})", path=path,
                         fix="pass a CSV/TSV (optionally .gz) or Parquet file") from None
    return [], comments


def read_table(path: Path, *, numeric: bool):
    """Read CSV/TSV/Parquet; with ``numeric`` every column after the first is Float32.

    Duplicate column names are an error (polars would silently rename them).
    """
    import polars as pl

    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path=path, fix="check the path")
    fmt, comments = _format(path), False
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(path).names
        except Exception as exc:  # noqa: BLE001 - any pyarrow failure: unreadable file
            raise InputError(f"not a readable Parquet file ({exc})", path=path) from None
    else:
        names, comments = _header(path, "," if fmt == "csv" else "\t")
    if len(names) < 2:
        raise InputError(f"table is empty or has {len(names)} column(s)", path=path,
                         fix="pass a table with an id column and at least one data column"
                         + ("" if fmt == "parquet" else "; is the separator right (.csv = comma, else tab)?"))
    dup = [n for n, c in Counter(names).items() if c > 1]
    if dup:
        raise InputError(f"{len(dup)} duplicate column name(s), e.g. {dup[:3]}", path=path,
                         fix="make column names (sample or gene ids) unique")
    strings = {n for n in names[1:] if n.lower() in ANNOTATION_COLUMNS} | {names[0]}
    schema = {n: (pl.String if (n in strings or not numeric) else pl.Float32) for n in names}
    try:
        if fmt == "parquet":
            df = pl.read_parquet(path)
            df = df.with_columns(pl.col(n).cast(t, strict=True) for n, t in schema.items())
        else:
            df = _read_csv(path, fmt, schema, comments)
    except pl.exceptions.PolarsError:
        if not numeric:
            raise InputError("cannot be parsed as a table", path=path) from None
        raise _non_numeric(path, names, strings) from None
    extra = [n for n in strings if n != names[0]]
    return df.drop(extra) if extra else df


def _read_csv(path: Path, fmt: str, schema: dict, comments: bool):
    """polars read_csv; spellings of missing values (NA) are only looked for when needed (2x slower)."""
    import polars as pl

    kw: dict[str, Any] = dict(separator="," if fmt == "csv" else "\t", schema_overrides=schema,
                              infer_schema=False, comment_prefix="#" if comments else None)
    try:
        return pl.read_csv(path, **kw)
    except pl.exceptions.PolarsError:
        return pl.read_csv(path, null_values=NULL_VALUES, **kw)


def _non_numeric(path: Path, names: list[str], strings: set[str]) -> InputError:
    """Find the first non-numeric cell to name it in the error."""
    import polars as pl

    df = read_table(path, numeric=False)
    total, first = 0, None
    for name in names:
        if name in strings:
            continue
        col = df[name]
        bad = col.is_not_null() & ~col.is_in(NULL_VALUES) & col.cast(pl.Float64, strict=False).is_null()
        n = int(bad.sum())
        if n and first is None:
            row = int(bad.arg_max())
            first = f"{col[row]!r} in column {name!r}, row {df[names[0]][row]!r}"
        total += n
    return InputError(f"{total} non-numeric cell(s), first {first}", path=path,
                      fix="expression values must be numbers; missing values may be empty or NA")


@dataclass
class ExpressionTable:
    """Samples x genes values as read (NaN = missing), with the orientation found."""

    samples: list[str]
    genes: list[str]
    values: np.ndarray
    orientation: str
    path: Path
    notes: list[str] = field(default_factory=list)


def read_expression(path: Path, *, samples_as_rows: bool | None = None) -> ExpressionTable:
    """Read a genes x samples (default) or samples x genes table; None detects the orientation.

    ``values`` is a float32 (samples, genes) view of the parsed columns (no copy).
    """
    path = Path(path)
    df = read_table(path, numeric=True)
    ids = [("" if v is None else str(v).strip()) for v in df.drop_in_place(df.columns[0]).to_list()]
    columns = list(df.columns)
    if not ids or not columns:
        raise InputError("expression table has no data rows", path=path, fix="pass a non-empty table")
    if samples_as_rows is None:
        samples_as_rows = _looks_like_samples(columns) < 0.5 and (
            _looks_like_samples(ids) >= 0.5 or _looks_like_genes(columns) >= 0.5)
    values = df.to_numpy()  # (ids, columns), one contiguous block per column
    samples, genes = (ids, columns) if samples_as_rows else (columns, ids)
    values = values if samples_as_rows else values.T
    what = "sample" if samples_as_rows else "gene"
    if any(not i for i in ids):
        raise InputError(f"{sum(not i for i in ids)} empty {what} id(s) in the first column", path=path,
                         fix="fill in or remove rows without an id")
    dup = [n for n, c in Counter(ids).items() if c > 1]
    if dup:
        raise InputError(f"{len(dup)} duplicate {what} id(s) in the first column, e.g. {dup[:3]}",
                         path=path, fix=f"make {what} ids unique")
    # one float64 sum (finite unless some value is NaN or infinite) before any per-cell check
    bad = np.isinf(values) if not np.isfinite(values.sum(dtype=np.float64)) else None
    if bad is not None and bad.any():
        r, c = np.argwhere(bad)[0]
        raise InputError(f"{int(bad.sum())} infinite value(s), first at sample {samples[r]!r}, gene "
                         f"{genes[c]!r}", path=path,
                         fix="replace infinities with real values or leave the cell empty")
    return ExpressionTable(samples, genes, values,
                           "samples x genes" if samples_as_rows else "genes x samples", path)


# --------------------------------------------------------------------------- fixed transforms
def clean_genes(table: ExpressionTable) -> ExpressionTable:
    """Clean gene ids, drop non-gene rows (``__no_feature``); duplicates from cleaning keep the first."""
    cleaned = [clean_gene_id(g) for g in table.genes]
    keep, seen, n_dup, n_skip = [], set(), 0, 0
    for i, g in enumerate(cleaned):
        if _NOT_GENES.match(g):
            n_skip += 1
        elif g in seen:
            n_dup += 1
        else:
            seen.add(g)
            keep.append(i)
    if n_skip:
        table.notes.append(f"dropped {n_skip} non-gene row(s) such as __no_feature")
    if n_dup:
        table.notes.append(f"{n_dup} gene id(s) duplicated after removing versions/aliases; kept the first")
    table.genes = [cleaned[i] for i in keep]
    if len(keep) < len(cleaned):
        table.values = table.values[:, keep]
    return table


def select_samples(samples: Sequence[str], *, keep_all: bool = False) -> tuple[list[int], list[str], dict]:
    """One sample per patient: TCGA primary tumour (type 01) unless ``keep_all``.

    Among several samples of one patient the choice is deterministic: type 01 first, then the
    lowest sample type, vial and barcode. Returns (indices, patient ids, counts for the report).
    """
    best: dict[str, tuple[tuple, int]] = {}
    per_patient: Counter = Counter()
    other_types: Counter = Counter()
    for i, s in enumerate(samples):
        parsed = parse_barcode(s)
        if parsed is None:
            patient, rank = s.strip(), (0, "", "", s)
        else:
            patient, stype, vial = parsed
            if stype and stype != "01" and not keep_all:
                other_types[stype] += 1
                continue
            rank = (0 if stype in (None, "01") else 1, stype or "", vial, s.upper())
        per_patient[patient] += 1
        if patient not in best or rank < best[patient][0]:
            best[patient] = (rank, i)
    patients = sorted(best)
    report = {
        "samples": len(samples),
        "dropped_not_primary": sum(other_types.values()),
        "dropped_types": dict(sorted(other_types.items())),
        "patients_with_duplicates": sum(c > 1 for c in per_patient.values()),
        "dropped_duplicates": sum(c - 1 for c in per_patient.values()),
    }
    return [best[p][1] for p in patients], patients, report


def load_panel(spec: str) -> list[str]:
    """``pam50`` (built in) or a file of gene ids (one per line or first column, ``#`` comments)."""
    if spec.lower() == "pam50":
        return list(PAM50_GENES)
    path = Path(spec)
    if not path.is_file():
        raise InputError("gene panel file not found", path=path,
                         fix="pass --genes pam50 or a file with one gene id per line")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise InputError("gene panel file is not text (UTF-8)", path=path,
                         fix="pass a plain-text file with one gene id per line") from None
    genes = []
    for line in text.splitlines():
        token = re.split(r"[,\t]", line.strip(), maxsplit=1)[0].strip()
        if token and not token.startswith("#"):
            genes.append(clean_gene_id(token))
    if not genes:
        raise InputError("gene panel file lists no genes", path=path, fix="one gene id per line")
    return list(dict.fromkeys(genes))


def panel_columns(genes: Sequence[str], panel: Sequence[str]) -> tuple[list[int], list[str]]:
    """Indices of ``genes`` in the panel (case-insensitive, old aliases accepted) and panel misses."""
    wanted = {g.upper() for g in panel}
    idx = [i for i, g in enumerate(genes) if g.upper() in wanted or GENE_ALIASES.get(g.upper()) in wanted]
    found = {genes[i].upper() for i in idx} | {GENE_ALIASES.get(genes[i].upper()) for i in idx}
    return idx, [g for g in panel if g.upper() not in found]


def looks_logged(values: np.ndarray) -> bool:
    """Negative values or a maximum <= 50 mean the data are already on a log scale."""
    if values.size == 0 or (np.isnan(values.flat[0]) and np.isnan(values).all()):
        return True
    return bool(np.nanmin(values) < 0 or np.nanmax(values) <= LOGGED_MAX)


def log_transform(values: np.ndarray, mode: str, *, path: Path | None = None,
                  inplace: bool = False) -> tuple[np.ndarray, bool]:
    """log2(x + 1) for mode ``yes``, or ``auto`` when the data are not logged yet."""
    if mode == "no" or (mode == "auto" and looks_logged(values)):
        return values, False
    if np.nanmin(values) < 0:
        raise InputError(f"--log yes but {int((values < 0).sum())} value(s) are negative", path=path,
                         fix="these data look already transformed: use --log no (or auto)")
    out = values if inplace else values.astype(np.result_type(values, np.float32), copy=True)
    np.add(out, 1, out=out)
    return np.log2(out, out=out), True


def zero_fraction(values: np.ndarray, rows: Sequence[int] | None = None,
                  cols: Sequence[int] | None = None) -> np.ndarray:
    """Per gene (column), the fraction of samples (rows) that are zero or missing."""
    missing = values == 0
    missing |= np.isnan(values)
    if rows is not None:
        missing = missing[np.asarray(rows)]
    if cols is not None:
        missing = missing[:, np.asarray(cols)]
    return missing.mean(axis=0)


# --------------------------------------------------------------------------- stage
@dataclass
class PrepExprConfig:
    """Options of ``brcatool prep-expr`` (defaults = the CLI's)."""

    expression: Path | None = None
    clinical: Path | None = None
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
    return Recipe(top_genes=cfg.top_genes, iqr_k=cfg.iqr_k, iqr_mode=cfg.iqr_mode, drop_frac=cfg.drop_frac)


def prepare_expression(cfg: PrepExprConfig, warnings: list[str]):
    """Read and apply the fixed transforms.

    Returns (patients, genes, float32 (genes, patients) C-order values, counts); rows and
    columns are picked by index first, so the big matrix is copied once.
    """
    path = Path(cfg.expression)  # type: ignore[arg-type]
    table = clean_genes(read_expression(path, samples_as_rows=cfg.samples_as_rows))
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
    cols = np.arange(len(genes))
    counts: dict[str, Any] = {"orientation": table.orientation, "samples_read": len(table.samples),
                              "genes_read": len(genes), **{f"samples_{k}": v for k, v in report.items()
                                                           if k not in ("samples", "dropped_types")}}
    if cfg.genes:
        idx, missing = panel_columns(genes, load_panel(cfg.genes))
        if not idx:
            raise InputError(f"gene panel {cfg.genes!r} matched none of the {len(genes)} genes "
                             f"(e.g. {genes[:3]})", path=path,
                             fix="pass a panel file with the same kind of ids as the table")
        if missing:
            warnings.append(f"gene panel: {len(missing)} gene(s) not in the table, e.g. {missing[:5]}")
        cols = np.asarray(idx)
    V = table.values  # (samples, genes) view
    zf = zero_fraction(V, rows, cols if len(cols) < len(genes) else None)
    keep = zf <= cfg.max_zero_frac
    counts["genes_dropped_zero"] = int((~keep).sum())
    if not keep.any():
        raise InputError(f"all {len(cols)} genes are zero or missing in more than {cfg.max_zero_frac:g} "
                         "of samples", path=path, fix="raise --max-zero-frac")
    cols = cols[keep]
    G = V.T[np.ix_(cols, np.asarray(rows))]  # the one copy: (genes, patients), C-order
    G, logged = log_transform(G, cfg.log, path=path, inplace=True)
    # the float64 sum of finite values is finite: only look for NaNs cell by cell when it is not
    nan = np.isnan(G) if not np.isfinite(G.sum(dtype=np.float64)) else None
    n_nan = 0 if nan is None else int(nan.sum())
    if n_nan:
        warnings.append(f"{path.name}: {n_nan} missing value(s) in kept genes set to 0 after the log")
        G[nan] = 0.0
    counts.update(log_applied=logged, genes_out=len(cols), patients_expression=len(patients),
                  missing_filled=n_nan)
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
    from brcatool.tasks import prepare_labels

    t0 = time.perf_counter()
    wd = workdir if isinstance(workdir, Workdir) else Workdir(Path(workdir))
    recipe = _check_config(cfg)
    manifest_path = wd.stage_manifest("prep-expr")
    outputs = {"expression": wd.expression_table, "labels": wd.labels_table, "recipe": wd.recipe_settings,
               "cohort": wd.cohort_table, "manifest": manifest_path}
    params = to_dict(cfg)
    params["inputs"] = {k: {"size": f["size"], "mtime": f["mtime"]} for k, p in
                        (("expression", cfg.expression), ("clinical", cfg.clinical)) if p is not None
                        for f in [fingerprint(p)]}
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
        manifest.add_input(cfg.expression)  # type: ignore[arg-type]
        if cfg.clinical is not None:
            manifest.add_input(cfg.clinical)
            labels, task, clinical = prepare_labels(
                Path(cfg.clinical), patients, warnings, id_column=cfg.id_column,
                label_column=cfg.label_column, task=cfg.task, positive=cfg.positive,
                unknown=cfg.unknown_labels)
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
        manifest_path.unlink(missing_ok=True)  # outputs below replace the old ones: not finished yet
        write_expression(wd.expression_table, patients, genes, G)
        write_parquet(labels, wd.labels_table, schema="labels")
        write_json(wd.recipe_settings, recipe.settings())
        write_parquet(cohort, wd.cohort_table, schema="cohort")
        write_yaml(cfg, manifest_path.with_suffix(".yaml"))
        alignment = alignment_counts(cohort)
        counts.update(labelled=labels.height, included=alignment["included"])
        manifest.write(manifest_path, counts=counts, task=task_name, classes=classes,
                       class_counts=class_counts, alignment=alignment, warnings=warnings)
        bar.update(step, advance=2)
    return PrepExprResult(wd.root, outputs, task_name, classes, class_counts, alignment, counts, warnings,
                          seconds=time.perf_counter() - t0)
