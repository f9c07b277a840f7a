"""Expression sources: one reader per layout users download, behind a registry (name -> Source).

``detect_source`` picks the layout where it is unambiguous (a folder: GDC; ``Hugo_Symbol`` /
``Entrez_Gene_Id`` first: cBioPortal; ``sample`` + TCGA barcodes or ``Ensembl_ID`` first: Xena;
anything else: a plain matrix); ``--format`` forces one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brcatool.artifacts import fingerprint
from brcatool.errors import InputError
from brcatool.expression.readers import ExpressionTable, peek
from brcatool.expression.sources import cbioportal, gdc, matrix, xena
from brcatool.expression.sources.base import FLAGS, GDC_VALUES, GENE_IDS, ReadOptions, Source

#: Registry: format name -> Source, in detection order (the fallback last).
SOURCES: dict[str, Source] = {s.name: s for s in (gdc.SOURCE, cbioportal.SOURCE, xena.SOURCE, matrix.SOURCE)}
FORMATS = ("auto", *SOURCES)

__all__ = ["FORMATS", "GDC_VALUES", "GENE_IDS", "SOURCES", "ReadOptions", "Source", "detect_source",
           "input_fingerprint", "read_source"]


def input_fingerprint(path: Path) -> dict[str, Any]:
    """Identity of an expression input for the manifest: a file's size/mtime, a folder's STAR files."""
    return gdc.folder_fingerprint(path) if Path(path).is_dir() else fingerprint(path)


def detect_source(path: Path) -> str:
    """The registered layout of ``path``."""
    p = peek(path)
    if gdc.is_star_file(p):
        raise InputError("this is one GDC STAR-count file; prep-expr reads the whole download", path=path,
                         fix="pass the download folder: --expression FOLDER --sample-sheet SHEET.tsv")
    return next(name for name, s in SOURCES.items() if s.detect(p))


def read_source(path: Path, fmt: str = "auto",
                opts: ReadOptions | None = None) -> tuple[ExpressionTable, str]:
    """Read ``path`` with the ``fmt`` reader (``auto``: detected); returns (table, format name)."""
    opts = opts or ReadOptions()
    if fmt not in FORMATS:
        raise InputError(f"unknown --format {fmt!r}", fix=f"use one of: {', '.join(FORMATS)}")
    name = detect_source(path) if fmt == "auto" else fmt
    source = SOURCES[name]
    unused = [FLAGS[o] for o in opts.changed() if o not in source.options]
    if unused:
        raise InputError(f"{', '.join(unused)} do(es) not apply to the {name} layout ({source.description})",
                         path=path, fix=f"drop {', '.join(unused)}, or pass --format for the right layout")
    if name == "gdc" and not Path(path).is_dir():
        raise InputError("--format gdc reads a download folder, got a file", path=path,
                         fix="pass the folder holding <uuid>/*.rna_seq.augmented_star_gene_counts.tsv")
    if name != "gdc" and Path(path).is_dir():
        raise InputError(f"--format {name} reads a file, got a folder", path=path, fix="pass the matrix file")
    return source.read(Path(path), opts), name
