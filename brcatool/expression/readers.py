"""Reading an expression matrix: orientation detection, ids checked, values as float32."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brcatool.errors import InputError
from brcatool.expression.genes import looks_like_genes
from brcatool.ids import is_sample_id
from brcatool.tables import read_table


def looks_like_samples(ids: Sequence[str]) -> float:
    """Fraction of (up to 500) ids that are TCGA barcodes or GSM accessions."""
    ids = [i for i in ids[:500] if i]
    return sum(is_sample_id(i) for i in ids) / max(len(ids), 1)


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
        samples_as_rows = looks_like_samples(columns) < 0.5 and (
            looks_like_samples(ids) >= 0.5 or looks_like_genes(columns) >= 0.5)
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
