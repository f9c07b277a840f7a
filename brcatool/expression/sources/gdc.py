"""GDC STAR-count downloads (data release 32+): a folder of
``<file-uuid>/<name>.rna_seq.augmented_star_gene_counts.tsv`` plus the GDC sample sheet. The files are
found up to three levels down (``DIR/<file>``, ``DIR/<uuid>/<file>``, ``DIR/gdc_download_<ts>/<uuid>/<file>``
as the cart's tar.gz unpacks), never in ``logs/``.

Each file starts with ``# gene-model: GENCODE v36``, then the header ``gene_id gene_name gene_type
unstranded stranded_first stranded_second tpm_unstranded fpkm_unstranded fpkm_uq_unstranded``, four
STAR summary rows (``N_unmapped``, ``N_multimapping``, ``N_noFeature``, ``N_ambiguous``) and one row
per gene, in the same order in every file. The sample sheet (``gdc_sample_sheet.<date>.tsv``: ``File
ID``, ``File Name``, ``Data Category``, ``Data Type``, ``Project ID``, ``Case ID``, ``Sample ID``,
``Sample Type``, sometimes more) maps files to samples.

Files are read in parallel threads (polars parses outside the GIL), two columns each, straight into
one preallocated samples x genes matrix. A file missing from the sheet or a sheet row without a
file is reported and skipped, and so is a row whose ``Sample ID`` cell lists several distinct
samples (a cell listing one sample twice, ``TCGA-AC-A2FB-01A, TCGA-AC-A2FB-01A``, is that sample); a
file that is not a STAR-count file, is cut short or has other gene ids than the first is an error
naming it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from brcatool.errors import InputError
from brcatool.expression.genes import NOT_GENES
from brcatool.expression.readers import ExpressionTable, Peek
from brcatool.expression.sources.base import GDC_VALUES, ReadOptions, Source
from brcatool.tables import read_table

SUFFIX = ".rna_seq.augmented_star_gene_counts.tsv"
COLUMNS = ("gene_id", "gene_name", "gene_type", "unstranded", "stranded_first", "stranded_second",
           "tpm_unstranded", "fpkm_unstranded", "fpkm_uq_unstranded")
SUMMARY_ROWS = ("N_unmapped", "N_multimapping", "N_noFeature", "N_ambiguous")
SHEET_GLOB = "gdc_sample_sheet*.tsv"
SHEET_COLUMNS = ("File Name", "Sample ID")


def detect(p: Peek) -> bool:
    return p.is_dir


def is_star_file(p: Peek) -> bool:
    """One STAR-count file (header gene_id, gene_name, gene_type, unstranded, ...)."""
    return not p.is_dir and p.columns[:4] == COLUMNS[:4]


#: Where STAR-count files are looked for: flat, ``<uuid>/``, ``gdc_download_<ts>/<uuid>/``.
SEARCH = ("", "*/", "*/*/")


def count_files(folder: Path) -> list[Path]:
    """The STAR-count files of a download folder (up to ``SEARCH``'s depth, not in ``logs/``), sorted."""
    folder = Path(folder)
    found = {p for pattern in SEARCH for p in folder.glob(f"{pattern}*{SUFFIX}")}
    return sorted(p for p in found if "logs" not in p.relative_to(folder).parts[:-1] and p.is_file())


def sheet_samples(cell: str | None) -> list[str]:
    """The distinct sample ids of a sheet cell (``A, A`` is one sample; ``A, B`` two), in order."""
    return list(dict.fromkeys(s.strip() for s in (cell or "").split(",") if s.strip()))


def find_sheet(folder: Path, given: Path | None) -> Path:
    """``given``, else the one sample sheet in the folder, else the one beside it."""
    if given is not None:
        return Path(given)
    found = sorted(Path(folder).glob(SHEET_GLOB)) or sorted(Path(folder).resolve().parent.glob(SHEET_GLOB))
    if len(found) == 1:
        return found[0]
    raise InputError(f"{'no' if not found else len(found)} GDC sample sheet(s) ({SHEET_GLOB}) in the folder "
                     "or beside it", path=folder,
                     fix="pass --sample-sheet gdc_sample_sheet.<date>.tsv (from the GDC cart: Sample Sheet)")


def folder_fingerprint(folder: Path) -> dict[str, Any]:
    """Identity of a download folder for the manifest: file count, total size, newest mtime."""
    stats = [f.stat() for f in count_files(folder)]
    return {"path": str(Path(folder).resolve()), "files": len(stats), "size": sum(s.st_size for s in stats),
            "mtime": max((s.st_mtime for s in stats), default=None)}


def _sheet(path: Path) -> list[tuple[str, str, str]]:
    """(file name, sample id, file id) of every sheet row."""
    df = read_table(path, numeric=False)
    missing = [c for c in SHEET_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"not a GDC sample sheet: no column(s) {missing}; columns: "
                         f"{', '.join(df.columns[:8])}", path=path,
                         fix="download the sample sheet from the GDC cart (Sample Sheet button)")
    file_ids = df["File ID"].to_list() if "File ID" in df.columns else [""] * df.height
    return [((f or "").strip(), (s or "").strip(), (i or "").strip())
            for f, s, i in zip(df["File Name"].to_list(), df["Sample ID"].to_list(), file_ids, strict=True)]


def _read_file(path: Path, columns: list[str], value: str):
    import polars as pl

    try:
        return pl.read_csv(path, separator="\t", comment_prefix="#", columns=columns,
                           schema_overrides={value: pl.Float32}, infer_schema=False)
    except pl.exceptions.ColumnNotFoundError:
        raise InputError(f"not a GDC STAR gene-counts file: no column {value!r} (or gene_id)", path=path,
                         fix=f"columns must be {' '.join(COLUMNS)}") from None
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"cannot be read as a STAR gene-counts file ({str(exc).splitlines()[0][:120]})",
                         path=path, fix="download the file again") from None


def read(path: Path, opts: ReadOptions) -> ExpressionTable:
    folder = Path(path)
    value = opts.gdc_value
    if value not in GDC_VALUES:
        raise InputError(f"--gdc-value must be one of {', '.join(GDC_VALUES)}, got {value!r}")
    sheet_path = find_sheet(folder, opts.sample_sheet)
    sheet = _sheet(sheet_path)
    on_disk: dict[str, Path] = {}
    for f in count_files(folder):
        on_disk.setdefault(f.name, f)
    if not on_disk:
        where = ", ".join(f"{folder}/{p}*{SUFFIX}" for p in SEARCH)
        raise InputError(f"no STAR-count files: looked for {where} (not in logs/)", path=folder,
                         fix="pass the GDC download folder (gdc-client, or the cart's tar.gz unpacked)")
    listed = {}
    several = []
    for name, cell, file_id in sheet:
        if not name.endswith(SUFFIX):
            continue
        samples_in_cell = sheet_samples(cell)
        if len(samples_in_cell) > 1:
            several.append(name)
        elif samples_in_cell:
            listed.setdefault(name, (samples_in_cell[0], file_id))
    no_file = sorted(n for n in listed if n not in on_disk)
    not_listed = sorted(n for n in on_disk if n not in listed and n not in several)
    picked = sorted((listed[n][0], n) for n in listed if n in on_disk)
    if not picked:
        raise InputError(f"none of the {len(on_disk)} STAR-count files is listed in the sample sheet",
                         path=sheet_path,
                         fix="pass the sample sheet of this download (--sample-sheet)")
    notes = [f"{len(names)} {what} (skipped), e.g. {names[:2]}" for names, what in (
        (no_file, "sample-sheet row(s) have no file in the folder"),
        (not_listed, "file(s) are not in the sample sheet"),
        (several, "file(s) list several samples in the sheet")) if names]

    files = [on_disk[n] for _, n in picked]
    columns = ["gene_id", value] + (["gene_name"] if opts.gene_names else [])
    first = _read_file(files[0], columns, value)
    ref_ids = first["gene_id"]
    is_gene = ~ref_ids.str.contains(f"^(?:{'|'.join(SUMMARY_ROWS)})$").to_numpy()
    is_gene &= np.array([not NOT_GENES.match(g or "") for g in ref_ids.to_list()])
    genes = (first["gene_name"] if opts.gene_names else ref_ids).fill_null("").to_numpy()[is_gene].tolist()
    values = np.empty((len(files), len(genes)), dtype=np.float32)

    def fill(k: int) -> None:
        df = first if k == 0 else _read_file(files[k], columns, value)
        if not df["gene_id"].equals(ref_ids):
            raise InputError(f"gene ids differ from {files[0].name} ({df.height} rows vs {len(ref_ids)}): "
                             "another gene model, or a truncated file", path=files[k],
                             fix="download the file again; use files of one GDC data release")
        row = df[value].to_numpy()[is_gene]
        if np.isnan(row).any():
            raise InputError(f"{int(np.isnan(row).sum())} gene row(s) without a {value!r} value (file cut "
                             "short?)", path=files[k], fix="download the file again")
        values[k] = row

    workers = opts.workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for _ in pool.map(fill, range(len(files))):
            pass
    counts: dict[str, int] = {}
    for sample, _ in picked:
        counts[sample] = counts.get(sample, 0) + 1
    samples = [s if counts[s] == 1 else f"{s} {listed[n][1] or n}" for s, n in picked]
    model = _gene_model(files[0])
    table = ExpressionTable(samples, genes, values, "files x genes", folder, notes=notes)
    table.scale = "raw"
    table.layout = (f"gdc: {len(files)} STAR-count files ({model or 'gene model not stated'}), {value}, "
                    f"{'gene_name' if opts.gene_names else 'Ensembl gene_id'}; sheet {sheet_path.name}")
    table.dropped.update(gdc_summary_rows=int((~is_gene).sum()), gdc_sheet_rows_without_file=len(no_file),
                         gdc_files_not_in_sheet=len(not_listed), gdc_files_with_several_samples=len(several))
    return table


def _gene_model(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        line = fh.readline().strip()
    return line.lstrip("# ").strip() if line.startswith("#") else ""


SOURCE = Source("gdc", "GDC STAR-count download folder (<uuid>/*.rna_seq.augmented_star_gene_counts.tsv) "
                "+ gdc_sample_sheet.<date>.tsv", detect, read,
                frozenset({"sample_sheet", "gdc_value", "gene_names", "workers"}))
