"""The synthetic cohort's expression and labels written as users download TCGA-BRCA.

``gdc``: the cart's download unpacked, ``gdc_download_<ts>/<file-uuid>/<uuid>.rna_seq.augmented_star_
gene_counts.tsv`` (GENCODE comment line, STAR summary rows, counts/TPM/FPKM/FPKM-UQ columns) with
``<file-uuid>/logs/<name>.parcel`` and ``MANIFEST.txt``, the GDC sample sheet beside it (the last
tumour's row lists its case and sample twice, ``X, X``, as the GDC does for some files), a
TCGAbiolinks PAM50 table saved with R's ``write.csv`` (row names) and GDCprepare's ``colData`` saved
the same way (``barcode``, ``patient``, ``sample``, ``paper_BRCA_Subtype_PAM50``); one extra Solid
Tissue Normal file. ``cbioportal``: ``data_mrna_seq_v2_rsem.txt`` (Hugo_Symbol, Entrez_Gene_Id, rows without
a symbol, a repeated symbol) with ``data_clinical_patient.txt`` / ``data_clinical_sample.txt`` (four
``#`` header lines, ``SUBTYPE`` = BRCA_LumA ...). ``xena``: gzip ``HiSeqV2`` (log2(x+1)) with
``BRCA_clinicalMatrix`` (``sampleID``, ``PAM50Call_RNAseq``, a normal sample's row).

Every layout carries the same patients, genes and subtypes as the tidy ``expression.tsv`` /
``clinical.tsv`` it is written from, so prep-expr must give the same patients, genes and labels.
"""

from __future__ import annotations

import gzip
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brcatool.artifacts import atomic_path, write_text
from brcatool.errors import InputError

LAYOUTS = ("gdc", "cbioportal", "xena")
GDC_SUFFIX = ".rna_seq.augmented_star_gene_counts.tsv"
GDC_HEADER = ("gene_id", "gene_name", "gene_type", "unstranded", "stranded_first", "stranded_second",
              "tpm_unstranded", "fpkm_unstranded", "fpkm_uq_unstranded")
SHEET_HEADER = ("File ID", "File Name", "Data Category", "Data Type", "Project ID", "Case ID", "Sample ID",
                "Sample Type")


@dataclass(frozen=True)
class LayoutFiles:
    """Where a layout was written and the prep-expr options it needs."""

    layout: str
    expression: Path  # a folder for gdc
    clinical: Path
    sample_sheet: Path | None = None
    prep_options: dict[str, Any] = field(default_factory=dict)
    coldata: Path | None = None  # gdc: TCGAbiolinks GDCprepare colData (another clinical table)


def ensembl_id(index: int) -> str:
    return f"ENSG{index + 1:011d}.{index % 9 + 1}"


def entrez_id(index: int) -> int:
    return 100_000 + index


def _tidy(expression: Path, clinical: Path) -> tuple[list[str], list[str], np.ndarray, dict[str, str]]:
    """(genes, sample barcodes, int counts (genes, samples), patient -> subtype) of the tidy tables."""
    import polars as pl

    expr = pl.read_csv(expression, separator="\t", infer_schema=False)
    genes = expr[expr.columns[0]].to_list()
    samples = expr.columns[1:]
    counts = expr.drop(expr.columns[0]).cast(pl.Int64).to_numpy()
    clin = pl.read_csv(clinical, separator="\t", infer_schema=False)
    subtypes = {p: s.removeprefix("BRCA.") for p, s in zip(clin["patient_id"], clin["PAM50"], strict=True)}
    return genes, samples, counts, subtypes


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _fmt(x: np.ndarray) -> list[str]:
    return [f"{v:.4f}" for v in x.tolist()]


def _gdc(out: Path, genes: list[str], samples: list[str], counts: np.ndarray,
         subtypes: dict[str, str]) -> LayoutFiles:
    rng = np.random.default_rng([len(samples), len(genes)])
    download = out / "gdc_download_20240601"
    length_kb = 0.5 + (np.arange(len(genes)) * 37 % 3000) / 1000  # deterministic gene lengths
    ids = [ensembl_id(i) for i in range(len(genes))]
    # one Solid Tissue Normal sample beside the tumours (prep-expr keeps primary tumours)
    columns = [(s, counts[:, j], "Primary Tumor") for j, s in enumerate(samples)]
    columns.append((samples[0][:12] + "-11A", counts[:, 0] // 2, "Solid Tissue Normal"))
    sheet = ["\t".join(SHEET_HEADER)]
    manifest = ["id\tfilename\tmd5\tsize\tstate"]
    doubled = len(samples) - 1  # this tumour's sheet cells name its case and sample twice
    for k, (sample, c, kind) in enumerate(columns):
        file_id, name = _uuid(rng), _uuid(rng) + GDC_SUFFIX
        rate = c / length_kb
        tpm = rate / max(rate.sum(), 1) * 1e6
        fpkm = c / length_kb / max(c.sum(), 1) * 1e6
        uq = max(float(np.percentile(c[c > 0], 75)) if (c > 0).any() else 1.0, 1.0)
        fpkm_uq = c / length_kb / uq * 1e3
        first = c // 2
        lines = ["# gene-model: GENCODE v36", "\t".join(GDC_HEADER)]
        lines += [f"{row}\t\t\t{a}\t{b}\t{d}\t\t\t" for row, a, b, d in (
            ("N_unmapped", 2421792, 2421792, 2421792), ("N_multimapping", 4591519, 4591519, 4591519),
            ("N_noFeature", 1771906, 29526018, 29678143), ("N_ambiguous", 2908165, 698697, 696929))]
        lines += ["\t".join(r) for r in zip(ids, genes, ["protein_coding"] * len(genes), map(str, c.tolist()),
                                             map(str, first.tolist()), map(str, (c - first).tolist()),
                                             _fmt(tpm), _fmt(fpkm), _fmt(fpkm_uq), strict=True)]
        write_text(download / file_id / name, "\n".join(lines) + "\n")
        write_text(download / file_id / "logs" / f"{name}.parcel", "")
        manifest.append(f"{file_id}\t{name}\t{_uuid(rng).replace('-', '')}\t0\treleased")
        cells = (sample[:12], sample, kind) if k != doubled else tuple(
            f"{v}, {v}" for v in (sample[:12], sample, kind))
        sheet.append("\t".join((file_id, name, "Transcriptome Profiling", "Gene Expression Quantification",
                                "TCGA-BRCA", *cells)))
    write_text(download / "MANIFEST.txt", "\n".join(manifest) + "\n")
    sheet_path = write_text(out / "gdc_sample_sheet.2024-06-01.tsv", "\n".join(sheet) + "\n")
    # TCGAbiolinks::TCGAquery_subtype("brca") saved with write.csv: quoted, row names first
    pam50 = ['"","patient","BRCA_Subtype_PAM50","vital_status"']
    pam50 += [f'"{i}","{p}","{s}","Alive"' for i, (p, s) in enumerate(sorted(subtypes.items()), start=1)]
    clinical = write_text(out / "TCGA-BRCA_PAM50_TCGAbiolinks.csv", "\n".join(pam50) + "\n")
    col_path = write_coldata(out / "TCGA-BRCA_colData.csv",
                             [(sample, kind, subtypes.get(sample[:12])) for sample, _, kind in columns])
    return LayoutFiles("gdc", download, clinical, sheet_path, {"gene_names": True}, col_path)


def write_coldata(path: Path, rows: list[tuple[str, str, str | None]]) -> Path:
    """TCGAbiolinks ``GDCprepare`` colData saved with ``write.csv``: row names, ``barcode`` (aliquot),
    ``patient``, ``sample``, ``shortLetterCode``, ``definition`` and ``paper_BRCA_Subtype_PAM50`` for
    (sample barcode, sample type, PAM50 or None = NA) rows; paper_* values are the patient's, so a
    normal sample's row carries its tumour's subtype, as in the real table."""
    lines = ['"","barcode","patient","sample","shortLetterCode","definition","paper_BRCA_Subtype_PAM50"']
    for k, (sample, kind, label) in enumerate(rows, start=1):
        tumour = kind == "Primary Tumor"
        code, what = ("TP", "Primary solid Tumor") if tumour else ("NT", "Solid Tissue Normal")
        lines.append(f'"{k}","{sample}-11R-A144-07","{sample[:12]}","{sample}","{code}","{what}",'
                     + (f'"{label}"' if label else "NA"))
    return write_text(path, "\n".join(lines) + "\n")


def _clinical_header(display: list[str], kinds: list[str], ids: list[str]) -> list[str]:
    """cBioPortal's four ``#`` lines (display names, descriptions, datatypes, priorities) + ids."""
    return ["#" + "\t".join(display), "#" + "\t".join(display), "#" + "\t".join(kinds),
            "#" + "\t".join("1" for _ in ids), "\t".join(ids)]


def _cbioportal(out: Path, genes: list[str], samples: list[str], counts: np.ndarray,
                subtypes: dict[str, str]) -> LayoutFiles:
    rsem = counts * (1.0 + 0.01 * (np.arange(len(samples)) % 7))[None, :]  # RSEM-like normalised values
    short = [s[:15] for s in samples]  # cBioPortal: TCGA-XX-XXXX-01
    lines = ["\t".join(["Hugo_Symbol", "Entrez_Gene_Id", *short])]
    n = len(samples)
    lines += [f"\t{e}\t" + "\t".join(["0"] * n) for e in (100130426, 100133144)]  # rows without a symbol
    for i, (g, row) in enumerate(zip(genes, rsem, strict=True)):
        lines.append("\t".join([g, str(entrez_id(i)), *_fmt(row)]))
    lines.append("\t".join([genes[-1], "999999", *["0"] * n]))  # a repeated symbol (another locus)
    matrix = write_text(out / "data_mrna_seq_v2_rsem.txt", "\n".join(lines) + "\n")
    patient = _clinical_header(["Patient Identifier", "Subtype", "Diagnosis Age"],
                               ["STRING", "STRING", "NUMBER"], ["PATIENT_ID", "SUBTYPE", "AGE"])
    patient += [f"{p}\tBRCA_{s}\t{50 + i % 30}" for i, (p, s) in enumerate(sorted(subtypes.items()))]
    clinical = write_text(out / "data_clinical_patient.txt", "\n".join(patient) + "\n")
    sample = _clinical_header(["Patient Identifier", "Sample Identifier", "Cancer Type"],
                              ["STRING", "STRING", "STRING"], ["PATIENT_ID", "SAMPLE_ID", "CANCER_TYPE"])
    sample += [f"{s[:12]}\t{s}\tBreast Cancer" for s in short]
    write_text(out / "data_clinical_sample.txt", "\n".join(sample) + "\n")
    return LayoutFiles("cbioportal", matrix, clinical)


def _xena(out: Path, genes: list[str], samples: list[str], counts: np.ndarray,
          subtypes: dict[str, str]) -> LayoutFiles:
    short = [s[:15] for s in samples]
    logged = np.log2(counts * 1.0 + 1.0)
    lines = ["\t".join(["sample", *short])]
    lines += ["\t".join([g, *_fmt(row)]) for g, row in zip(genes, logged, strict=True)]
    matrix = out / "HiSeqV2.gz"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(matrix) as tmp:
        tmp.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))
    rows = ["\t".join(["sampleID", "_PATIENT", "PAM50Call_RNAseq", "sample_type"])]
    rows += [f"{p}-01\t{p}\t{s}\tPrimary Tumor" for p, s in sorted(subtypes.items())]
    first = sorted(subtypes)[0]
    rows.append(f"{first}-11\t{first}\tNormal\tSolid Tissue Normal")  # a normal sample's own call
    clinical = write_text(out / "BRCA_clinicalMatrix", "\n".join(rows) + "\n")
    return LayoutFiles("xena", matrix, clinical)


_WRITERS = {"gdc": _gdc, "cbioportal": _cbioportal, "xena": _xena}


def write_layout(expression: Path, clinical: Path, layout: str, out: Path, *,
                 overwrite: bool = False) -> LayoutFiles:
    """Write a synthetic cohort's tidy ``expression.tsv`` + ``clinical.tsv`` in ``layout`` under ``out``."""
    if layout not in _WRITERS:
        raise InputError(f"unknown layout {layout!r}", fix=f"use one of: {', '.join(LAYOUTS)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise InputError("output folder is not empty", path=out, fix="pass --overwrite or choose another")
        shutil.rmtree(out)
    genes, samples, counts, subtypes = _tidy(Path(expression), Path(clinical))
    return _WRITERS[layout](out, genes, samples, counts, subtypes)
