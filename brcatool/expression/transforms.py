"""Fixed, label-free transforms of prep-expr: gene-id cleaning, one sample per patient, log2(x+1),
the fraction of zero/missing values per gene. Nothing here is fitted on data (that is the Recipe).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from brcatool.errors import InputError
from brcatool.expression.genes import NOT_GENES, clean_gene_id
from brcatool.expression.readers import ExpressionTable
from brcatool.ids import parse_barcode

LOGGED_MAX = 50.0  # log2-scale RNA-seq never exceeds ~30; counts/TPM do


#: How ``--duplicate-genes`` resolves a gene id found in several rows.
DUPLICATE_POLICIES = ("first", "mean", "max-variance", "error")


def clean_genes(table: ExpressionTable, *, duplicates: str = "first") -> ExpressionTable:
    """Clean gene ids; drop empty ids and non-gene rows (``__no_feature``, STAR ``N_unmapped``);
    resolve genes found in several rows (as read, or after removing Ensembl versions) by policy:
    ``first`` row in file order, ``mean`` of the rows (input scale, missing cells ignored),
    ``max-variance`` row (variance over samples; ties: the first) or ``error``.

    Every drop is counted in ``table.dropped`` and said in ``table.notes``.
    """
    if duplicates not in DUPLICATE_POLICIES:
        raise InputError(f"--duplicate-genes must be one of {', '.join(DUPLICATE_POLICIES)}, "
                         f"got {duplicates!r}")
    cleaned = [clean_gene_id(g) for g in table.genes]
    rows: dict[str, list[int]] = {}
    n_empty = n_skip = 0
    for i, g in enumerate(cleaned):
        if not g:
            n_empty += 1
        elif NOT_GENES.match(g):
            n_skip += 1
        else:
            rows.setdefault(g, []).append(i)
    dup = {g: idx for g, idx in rows.items() if len(idx) > 1}
    if dup and duplicates == "error":
        raise InputError(f"{len(dup)} gene id(s) found in several rows, e.g. {list(dup)[:5]}",
                         path=table.path,
                         fix="pass --duplicate-genes first|mean|max-variance to resolve them")
    if n_empty:
        table.notes.append(f"dropped {n_empty} row(s) with an empty gene id")
    if n_skip:
        table.notes.append(f"dropped {n_skip} non-gene row(s) such as __no_feature / N_unmapped")
    values = table.values
    pick = {g: idx[0] for g, idx in rows.items()}
    if dup and duplicates == "max-variance":
        for g, idx in dup.items():
            pick[g] = idx[int(np.argmax(np.nan_to_num(np.nanvar(values[:, idx], axis=0), nan=-1.0)))]
    keep = list(pick.values())
    genes = list(pick)
    if len(keep) < len(cleaned):
        values = values[:, keep]
    if dup and duplicates == "mean":
        values = np.array(values, dtype=np.float32)  # own the memory before writing into it
        pos = {g: j for j, g in enumerate(genes)}
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-missing groups stay NaN
            for g, idx in dup.items():
                values[:, pos[g]] = np.nanmean(table.values[:, idx], axis=1)
    if dup:
        n_rows = sum(len(i) - 1 for i in dup.values())
        shown = ", ".join(list(dup)[:8]) + (", ..." if len(dup) > 8 else "")
        table.notes.append(f"{len(dup)} gene id(s) found in several rows ({shown}): "
                           f"{n_rows} row(s) resolved by --duplicate-genes {duplicates}")
    table.dropped.update(empty_gene_ids=n_empty, non_gene_rows=n_skip,
                         duplicate_gene_rows=sum(len(i) - 1 for i in dup.values()),
                         duplicate_genes={"policy": duplicates, "genes": len(dup), "names": sorted(dup)[:50]})
    table.genes, table.values = genes, values
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


#: Scales ``value_scale`` tells apart.
SCALES = ("raw", "log", "centred", "mixed")
CENTRED_NEGATIVE = 0.2  # z-scores: about half the values are negative ...
CENTRED_MEAN = 0.5  # ... and they average about 0


def value_scale(values: np.ndarray) -> str:
    """What the values look like: ``raw`` (counts/TPM: no negatives, max > 50), ``log`` (max <= 50,
    e.g. log2(x+1) or log2(x+0.001)), ``centred`` (z-scores: >= 20 % negative, mean within 0.5 of
    0), or ``mixed`` (raw-looking, yet some values negative: corrupt or mislabelled data).
    Missing values are ignored; an all-missing matrix counts as ``log`` (nothing to transform).
    """
    if values.size == 0 or (np.isnan(values.flat[0]) and np.isnan(values).all()):
        return "log"
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    if lo < 0:
        negative = float(np.count_nonzero(values < 0)) / max(int(np.count_nonzero(~np.isnan(values))), 1)
        if negative >= CENTRED_NEGATIVE and abs(float(np.nanmean(values, dtype=np.float64))) <= CENTRED_MEAN:
            return "centred"
    if hi <= LOGGED_MAX:
        return "log"
    return "mixed" if lo < 0 else "raw"


def looks_logged(values: np.ndarray) -> bool:
    """Already transformed (log scale or centred): ``--log auto`` leaves such values as they are."""
    return value_scale(values) in ("log", "centred")


def decide_log(values: np.ndarray, mode: str, *, path: Path | None = None,
               hint: str | None = None) -> tuple[bool, str]:
    """(apply log2(x+1)?, the input scale said in the summary) for ``--log auto|yes|no``.

    ``hint`` is what the source says its values are (``log2(x+1)``, ``zscore``, ``raw``): auto
    trusts it (never logs logged or z-scored values again; always logs raw ones). Without a hint
    auto looks at the values: ``raw`` is logged, ``log``/``centred`` left as they are, ``mixed`` is
    an error. Logging negative values is an error.
    """
    if mode == "no":
        return False, hint or "as given (--log no)"
    if mode == "auto" and hint != "raw":  # a source that ships raw values (GDC) is always logged
        if hint is not None:
            return False, f"{hint} (source layout)"
        scale = value_scale(values)
        if scale == "mixed":
            n = int(np.count_nonzero(values < 0))
            raise InputError(f"--log auto: {n} negative value(s) in a matrix that otherwise looks like raw "
                             f"counts/TPM (max {float(np.nanmax(values)):g})", path=path,
                             fix="correct the negative values, or pass --log no if the data are already "
                                 "transformed")
        if scale != "raw":
            return False, {"log": "log scale (max <= 50)", "centred": "z-scores (centred)"}[scale]
    if np.nanmin(values) < 0:
        what = "--log yes" if mode == "yes" else "raw values (source layout) to log"
        raise InputError(f"{what} but {int((values < 0).sum())} value(s) are negative", path=path,
                         fix="these data look already transformed: use --log no (or auto)")
    return True, "raw"


def log2p1(values: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """log2(x + 1), in place when asked (float input)."""
    out = values if inplace else values.astype(np.result_type(values, np.float32), copy=True)
    np.add(out, 1, out=out)
    return np.log2(out, out=out)


def log_transform(values: np.ndarray, mode: str, *, path: Path | None = None,
                  inplace: bool = False, hint: str | None = None) -> tuple[np.ndarray, bool]:
    """log2(x + 1) for mode ``yes``, or ``auto`` when the data are raw (see :func:`decide_log`)."""
    apply, _ = decide_log(values, mode, path=path, hint=hint)
    return (log2p1(values, inplace=inplace), True) if apply else (values, False)


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
