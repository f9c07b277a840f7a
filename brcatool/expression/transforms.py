"""Fixed, label-free transforms of prep-expr: gene-id cleaning, one sample per patient, log2(x+1),
the fraction of zero/missing values per gene. Nothing here is fitted on data (that is the Recipe).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from brcatool.errors import InputError
from brcatool.expression.genes import NOT_GENES, clean_gene_id
from brcatool.expression.readers import ExpressionTable
from brcatool.ids import parse_barcode

LOGGED_MAX = 50.0  # log2-scale RNA-seq never exceeds ~30; counts/TPM do


def clean_genes(table: ExpressionTable) -> ExpressionTable:
    """Clean gene ids, drop non-gene rows (``__no_feature``); duplicates from cleaning keep the first."""
    cleaned = [clean_gene_id(g) for g in table.genes]
    keep, seen, n_dup, n_skip = [], set(), 0, 0
    for i, g in enumerate(cleaned):
        if NOT_GENES.match(g):
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
