"""Delimited and Parquet tables as read from the user: CSV/TSV (optionally .gz, ``#`` comment lines)
or Parquet, with missing-value spellings and one-line errors naming the file.

The bottom floor shared by the expression readers and the clinical (label) tables.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

from brcatool.errors import InputError

NULL_VALUES = ["", "NA", "N/A", "na", "nan", "NaN", "null", "NULL", "None"]
#: Annotation columns that sit beside the gene id in GDC/cBioPortal matrices (not samples).
ANNOTATION_COLUMNS = {"entrez_gene_id", "gene_name", "gene_type", "description", "name"}


def table_format(path: Path) -> str:
    """parquet, csv or tsv, from the file name (``.gz`` ignored)."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return "csv" if name.endswith(".csv") else "tsv"


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it is gzip; unreadable or corrupt files name themselves."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror or exc})", path=path,
                         fix="check the path and its permissions") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"corrupt or truncated gzip file ({exc})", path=path,
                             fix="download the file again (`gzip -t FILE` checks it)") from None
    return data


def split_header(data: bytes, sep: str, path: Path) -> tuple[list[str], int, bool]:
    """(column names, byte offset where the header row starts, whether ``#`` lines come first)."""
    pos, comments = 0, False
    while pos < len(data):
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end
        line = data[pos:end]
        if line.startswith(b"#"):
            comments = True
        elif line.strip():
            try:
                text = line.decode("utf-8").rstrip("\r").lstrip("\ufeff")  # Excel's byte-order mark
            except UnicodeDecodeError as exc:
                raise InputError(f"cannot read as text ({exc})", path=path,
                                 fix="pass a CSV/TSV (optionally .gz) or Parquet file") from None
            return next(csv.reader([text], delimiter=sep)), pos, comments
        pos = end + 1
    return [], len(data), comments


def check_fields(data: bytes, start: int, n_fields: int, sep: str, path: Path) -> None:
    """Every data row has as many fields as the header: a row cut short (a truncated download, a
    stray tab) is an error naming the row, never cells silently read as missing.

    One ``bytes.count`` pass when the file is sound; the rows are only walked to name a bad one.
    Quoted CSV (a comma may sit inside quotes) is not checked.
    """
    sep_b = sep.encode()
    body = data[start:]
    if sep == "," and b'"' in body:
        return
    n_lines = body.count(b"\n") + (0 if body.endswith(b"\n") else 1)
    if body.count(sep_b) == n_lines * (n_fields - 1):
        return
    for number, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip() or line.startswith(b"#"):
            continue
        found = line.count(sep_b) + 1
        if found != n_fields:
            row = line.split(sep_b, 1)[0].decode("utf-8", "replace")[:40]
            cut = "; the file looks truncated" if number >= n_lines and not body.endswith(b"\n") else ""
            raise InputError(f"row {number - 1} ({row!r}) has {found} field(s) but the header has "
                             f"{n_fields}{cut}", path=path,
                             fix="download or export the file again; every row needs one value per column")


def read_table(path: Path, *, numeric: bool, id_column: str | None = None):
    """Read CSV/TSV/Parquet; with ``numeric`` every column after the first is Float32.

    ``id_column`` (default: the first) becomes the first column; the other annotation columns
    (``ANNOTATION_COLUMNS``, e.g. Entrez_Gene_Id) are dropped. Duplicate column names are an error
    (polars would silently rename them); so is a row with too few fields (truncated file).
    """
    import polars as pl

    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path=path, fix="check the path")
    fmt, comments = table_format(path), False
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(path).names
        except Exception as exc:  # noqa: BLE001 - any pyarrow failure: unreadable file
            raise InputError(f"not a readable Parquet file ({exc})", path=path) from None
    else:
        sep = "," if fmt == "csv" else "\t"
        data = read_bytes(path)
        names, start, comments = split_header(data, sep, path)
    if len(names) < 2:
        raise InputError(f"table is empty or has {len(names)} column(s)", path=path,
                         fix="pass a table with an id column and at least one data column"
                         + ("" if fmt == "parquet" else "; is the separator right (.csv = comma, else tab)?"))
    dup = [n for n, c in Counter(names).items() if c > 1]
    if dup:
        raise InputError(f"{len(dup)} duplicate column name(s), e.g. {dup[:3]}", path=path,
                         fix="make column names (sample or gene ids) unique")
    if fmt != "parquet":
        check_fields(data, start, len(names), sep, path)
    id_column = id_column or names[0]
    if id_column not in names:
        raise InputError(f"no column {id_column!r}; columns: {', '.join(names[:8])}", path=path)
    strings = {n for n in names[1:] if n.lower() in ANNOTATION_COLUMNS} | {names[0], id_column}
    schema = {n: (pl.String if (n in strings or not numeric) else pl.Float32) for n in names}
    try:
        if fmt == "parquet":
            df = pl.read_parquet(path)
            df = df.with_columns(pl.col(n).cast(t, strict=True) for n, t in schema.items())
        else:
            df = _read_csv(data, fmt, schema, comments)
    except pl.exceptions.PolarsError:
        if not numeric:
            raise InputError("cannot be parsed as a table", path=path) from None
        raise _non_numeric(path, names, strings) from None
    extra = [n for n in names if n in strings and n != id_column]
    df = df.drop(extra) if extra else df
    return df if id_column == names[0] else df.select(id_column, pl.exclude(id_column))


def _read_csv(data: bytes, fmt: str, schema: dict, comments: bool):
    """polars read_csv; spellings of missing values (NA) are only looked for when needed (2x slower)."""
    import polars as pl

    kw: dict[str, Any] = dict(separator="," if fmt == "csv" else "\t", schema_overrides=schema,
                              infer_schema=False, comment_prefix="#" if comments else None)
    try:
        return pl.read_csv(io.BytesIO(data), **kw)
    except pl.exceptions.PolarsError:
        return pl.read_csv(io.BytesIO(data), null_values=NULL_VALUES, **kw)


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
