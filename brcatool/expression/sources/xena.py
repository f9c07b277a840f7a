"""UCSC Xena matrices: the TCGA hub's ``TCGA.BRCA.sampleMap/HiSeqV2`` (gzip; first column
``sample``; HUGO symbols; log2(RSEM normalised count + 1)) and the GDC hub's
``TCGA-BRCA.star_tpm.tsv.gz`` (first column ``Ensembl_ID``; log2(tpm + 1); ``star_counts``,
``star_fpkm``, ``star_fpkm-uq`` likewise log2(x + 1)). Xena values are never logged again.
"""

from __future__ import annotations

from pathlib import Path

from brcatool.errors import InputError
from brcatool.expression.readers import ExpressionTable, Peek, looks_like_samples, read_expression
from brcatool.expression.sources.base import ReadOptions, Source


def detect(p: Peek) -> bool:
    if p.is_dir:
        return False
    return p.first == "Ensembl_ID" or (p.first == "sample" and looks_like_samples(list(p.columns[1:])) >= 0.5)


def read(path: Path, opts: ReadOptions) -> ExpressionTable:
    path = Path(path)
    table = read_expression(path, samples_as_rows=False)
    name = path.name.lower()
    gdc_hub = name.startswith("tcga-") or any(g.startswith("ENSG") for g in table.genes[:20])
    if opts.gene_names and gdc_hub:
        raise InputError("this Xena GDC-hub matrix has Ensembl ids only (no gene names)", path=path,
                         fix="drop --gene-names (gene panels then need Ensembl ids)")
    unit = next((u for u in ("star_tpm", "star_fpkm-uq", "star_fpkm", "star_counts") if u in name), "values")
    table.scale = "log2(x+1)"
    table.layout = (f"xena: {path.name} (GDC hub, Ensembl_ID, log2({unit.removeprefix('star_')}+1))"
                    if gdc_hub else f"xena: {path.name} (TCGA hub, HUGO symbols, log2(x+1))")
    return table


SOURCE = Source("xena", "UCSC Xena HiSeqV2 (TCGA hub) and TCGA-BRCA.star_*.tsv.gz (GDC hub), log2(x+1)",
                detect, read, frozenset({"gene_names", "workers"}))
