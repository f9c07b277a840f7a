"""cBioPortal expression matrices (``brca_tcga_pan_can_atlas_2018``, legacy ``brca_tcga``).

``data_mrna_seq_v2_rsem.txt``: ``Hugo_Symbol``, ``Entrez_Gene_Id``, then one column per sample
(``TCGA-XX-XXXX-01``); RSEM normalised counts (not logged); some rows have an empty symbol and some
symbols repeat. ``data_mrna_seq_v2_rsem_zscores_ref_*.txt`` (and the legacy ``*_Zscores.txt``):
the same layout holding z-scores, never logged again.
"""

from __future__ import annotations

from pathlib import Path

from brcatool.errors import InputError
from brcatool.expression.readers import ExpressionTable, Peek, peek, read_expression
from brcatool.expression.sources.base import ReadOptions, Source

ID_COLUMNS = {"symbol": "Hugo_Symbol", "entrez": "Entrez_Gene_Id"}


def detect(p: Peek) -> bool:
    return not p.is_dir and p.first in ID_COLUMNS.values()


def is_zscores(path: Path) -> bool:
    return "zscore" in Path(path).name.lower()


def read(path: Path, opts: ReadOptions) -> ExpressionTable:
    path = Path(path)
    column = ID_COLUMNS.get(opts.gene_id)
    if column is None:
        raise InputError(f"--gene-id must be symbol or entrez, got {opts.gene_id!r}")
    columns = peek(path).columns
    if column not in columns:
        other = next(k for k, v in ID_COLUMNS.items() if v != column)
        raise InputError(f"no {column!r} column (columns start {', '.join(columns[:3])})", path=path,
                         fix=f"pass --gene-id {other}" if ID_COLUMNS[other] in columns
                         else "pass a cBioPortal data_mrna_seq_v2_rsem*.txt file")
    table = read_expression(path, samples_as_rows=False, id_column=column)
    empty = sum(not g for g in table.genes)
    if empty and opts.gene_id == "symbol":
        table.notes.append(f"{empty} row(s) have no Hugo_Symbol (dropped below; --gene-id entrez keeps "
                           "them under their Entrez id)")
    zscores = is_zscores(path)
    table.scale = "zscore" if zscores else None
    table.layout = (f"cbioportal: {path.name} ({column}; "
                    f"{'z-scores' if zscores else 'RSEM values'}, genes x samples)")
    return table


SOURCE = Source("cbioportal", "cBioPortal data_mrna_seq_v2_rsem.txt (Hugo_Symbol, Entrez_Gene_Id) "
                "and its z-score matrices", detect, read, frozenset({"gene_id", "workers"}))
