"""Any tidy matrix: genes x samples (first column gene ids) or samples x genes, CSV/TSV/.gz/Parquet."""

from __future__ import annotations

from pathlib import Path

from brcatool.expression.readers import ExpressionTable, Peek, read_expression
from brcatool.expression.sources.base import ReadOptions, Source


def detect(peek: Peek) -> bool:
    return not peek.is_dir  # the fallback for any table


def read(path: Path, opts: ReadOptions) -> ExpressionTable:
    table = read_expression(path, samples_as_rows=opts.samples_as_rows)
    table.layout = f"matrix: {Path(path).name} ({table.orientation})"
    return table


SOURCE = Source("matrix", "a genes x samples or samples x genes table (CSV/TSV, .gz, Parquet)",
                detect, read, frozenset({"samples_as_rows", "workers"}))
