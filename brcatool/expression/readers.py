"""Reading an expression matrix: a peek at a file's first lines (for format detection), orientation
detection, ids checked, values as float32. The per-source readers (``sources/``) build on these.
"""

from __future__ import annotations

import gzip
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brcatool.errors import InputError
from brcatool.expression.genes import looks_like_genes
from brcatool.ids import is_sample_id
from brcatool.tables import is_gzip, read_table, table_format


def looks_like_samples(ids: Sequence[str]) -> float:
    """Fraction of (up to 500) ids that are TCGA barcodes or GSM accessions."""
    ids = [i for i in ids[:500] if i]
    return sum(is_sample_id(i) for i in ids) / max(len(ids), 1)


@dataclass
class ExpressionTable:
    """Samples x genes values as read (NaN = missing), with the orientation found.

    ``layout`` says which source layout was read, ``scale`` what the source says its values are
    (``log2(x+1)``, ``zscore`` or None = unknown), ``dropped`` counts rows/columns/files left out
    while reading and ``notes`` are the warnings to show.
    """

    samples: list[str]
    genes: list[str]
    values: np.ndarray
    orientation: str
    path: Path
    notes: list[str] = field(default_factory=list)
    layout: str = "matrix"
    scale: str | None = None
    dropped: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Peek:
    """What format detection looks at: a folder, or a file's name and header row."""

    path: Path
    is_dir: bool
    columns: tuple[str, ...] = ()

    @property
    def first(self) -> str:
        return self.columns[0] if self.columns else ""


def peek(path: Path) -> Peek:
    """Header row of a CSV/TSV (first 64 KiB, gzip ok) or Parquet schema, without reading the file."""
    path = Path(path)
    if path.is_dir():
        return Peek(path, True)
    if not path.is_file():
        raise InputError("file or folder not found", path=path, fix="check the path")
    fmt = table_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return Peek(path, False, tuple(pq.read_schema(path).names))
        except Exception:  # noqa: BLE001 - read_table names the problem later
            return Peek(path, False)
    sep = "," if fmt == "csv" else "\t"
    try:
        opener: Any = gzip.open if is_gzip(path) else open
        with opener(path, "rb") as fh:
            head = fh.read(1 << 16)
    except (OSError, EOFError, zlib.error):
        return Peek(path, False)  # read_table names the problem later
    for raw in head.split(b"\n"):
        line = raw.decode("utf-8", "replace").rstrip("\r").lstrip("\ufeff")
        if line.strip() and not line.startswith("#"):
            return Peek(path, False, tuple(c.strip().strip('"') for c in line.split(sep)))
    return Peek(path, False)


def read_expression(path: Path, *, samples_as_rows: bool | None = None,
                    id_column: str | None = None) -> ExpressionTable:
    """Read a genes x samples (default) or samples x genes table; None detects the orientation.

    ``values`` is a float32 (samples, genes) view of the parsed columns (no copy). Gene ids may
    be empty or repeated here (``transforms.clean_genes`` resolves them); sample ids may not.
    ``id_column`` picks the id column (default the first, e.g. cBioPortal's Entrez_Gene_Id).
    """
    path = Path(path)
    df = read_table(path, numeric=True, id_column=id_column)
    ids = [("" if v is None else str(v).strip()) for v in df.drop_in_place(df.columns[0]).to_list()]
    columns = list(df.columns)
    if not ids or not columns:
        raise InputError("expression table has no data rows", path=path, fix="pass a non-empty table")
    if samples_as_rows is None:
        samples_as_rows = looks_like_samples(columns) < 0.5 and (
            looks_like_samples(ids) >= 0.5 or looks_like_genes(columns) >= 0.5)
    values = df.to_numpy()  # (ids, columns), one contiguous block per column
    samples, genes = (ids, columns) if samples_as_rows else (columns, ids)
    values = values if samples_as_rows else values.T
    if samples_as_rows:
        if any(not i for i in ids):
            raise InputError(f"{sum(not i for i in ids)} empty sample id(s) in the first column", path=path,
                             fix="fill in or remove rows without an id")
        dup = [n for n, c in Counter(ids).items() if c > 1]
        if dup:
            raise InputError(f"{len(dup)} duplicate sample id(s) in the first column, e.g. {dup[:3]}",
                             path=path, fix="make sample ids unique")
    # one float64 sum (finite unless some value is NaN or infinite) before any per-cell check
    bad = np.isinf(values) if not np.isfinite(values.sum(dtype=np.float64)) else None
    if bad is not None and bad.any():
        r, c = np.argwhere(bad)[0]
        raise InputError(f"{int(bad.sum())} infinite value(s), first at sample {samples[r]!r}, gene "
                         f"{genes[c]!r}", path=path,
                         fix="replace infinities with real values or leave the cell empty")
    table = ExpressionTable(samples, genes, values,
                            "samples x genes" if samples_as_rows else "genes x samples", path)
    if not ends_with_line_end(path):
        table.notes.append(f"the file does not end with a line end: if it was cut short, its last row "
                           f"({ids[-1]!r}) may be incomplete")
        table.dropped["no_final_line_end"] = 1
    return table


def ends_with_line_end(path: Path) -> bool:
    """Whether a plain-text table ends with a newline (gzip and Parquet check themselves)."""
    if table_format(path) == "parquet" or is_gzip(path):
        return True
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        if fh.tell() == 0:
            return True
        fh.seek(-1, 2)
        return fh.read(1) == b"\n"
