"""Gene ids and panels: id cleaning (Ensembl versions, ``SYMBOL|ENTREZ``), PAM50, panel files."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from brcatool.errors import InputError

#: The 50 PAM50 genes (Parker et al. 2009), current HGNC symbols.
PAM50_GENES: tuple[str, ...] = (
    "ACTR3B", "ANLN", "BAG1", "BCL2", "BIRC5", "BLVRA", "CCNB1", "CCNE1", "CDC20", "CDC6",
    "CDH3", "CENPF", "CEP55", "CXXC5", "EGFR", "ERBB2", "ESR1", "EXO1", "FGFR4", "FOXA1",
    "FOXC1", "GPR160", "GRB7", "KIF2C", "KRT14", "KRT17", "KRT5", "MAPT", "MDM2", "MELK",
    "MIA", "MKI67", "MLPH", "MMP11", "MYBL2", "MYC", "NAT1", "NDC80", "NUF2", "ORC6",
    "PGR", "PHGDH", "PTTG1", "RRM2", "SFRP1", "SLC39A6", "TMEM45B", "TYMS", "UBE2C", "UBE2T",
)
#: Older symbols of PAM50 genes still found in TCGA tables.
GENE_ALIASES = {"ORC6L": "ORC6", "KNTC2": "NDC80", "CDCA1": "NUF2"}

_ENSEMBL = re.compile(r"^(ENS[A-Z]*[GT]\d{11})\.\d+(_PAR_Y)?$")
#: Rows of count files that are not genes (HTSeq ``__no_feature``, STAR ``N_unmapped`` ...).
NOT_GENES = re.compile(r"^(__|N_(unmapped|multimapping|noFeature|ambiguous)$)")


def clean_gene_id(gene: str) -> str:
    """``ENSG00000141510.16`` -> ``ENSG00000141510``; ``TP53|7157`` -> ``TP53``; symbols as they are."""
    gene = gene.strip()
    if "|" in gene:
        symbol = gene.split("|", 1)[0]
        if symbol and symbol != "?":
            gene = symbol
    m = _ENSEMBL.match(gene)
    return m.group(1) + (m.group(2) or "") if m else gene


def looks_like_genes(ids: Sequence[str]) -> float:
    """Fraction of (up to 5,000) ids that are Ensembl ids or PAM50 symbols."""
    ids = [i for i in ids[:5000] if i]
    pam = set(PAM50_GENES)
    return sum(bool(i.startswith("ENS") or clean_gene_id(i).upper() in pam) for i in ids) / max(len(ids), 1)


def load_panel(spec: str) -> list[str]:
    """``pam50`` (built in) or a file of gene ids (one per line or first column, ``#`` comments)."""
    if spec.lower() == "pam50":
        return list(PAM50_GENES)
    path = Path(spec)
    if not path.is_file():
        raise InputError("gene panel file not found", path=path,
                         fix="pass --genes pam50 or a file with one gene id per line")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise InputError("gene panel file is not text (UTF-8)", path=path,
                         fix="pass a plain-text file with one gene id per line") from None
    genes = []
    for line in text.splitlines():
        token = re.split(r"[,\t]", line.strip(), maxsplit=1)[0].strip()
        if token and not token.startswith("#"):
            genes.append(clean_gene_id(token))
    if not genes:
        raise InputError("gene panel file lists no genes", path=path, fix="one gene id per line")
    return list(dict.fromkeys(genes))


def panel_columns(genes: Sequence[str], panel: Sequence[str]) -> tuple[list[int], list[str]]:
    """Indices of ``genes`` in the panel (case-insensitive, old aliases accepted) and panel misses."""
    wanted = {g.upper() for g in panel}
    idx = [i for i, g in enumerate(genes) if g.upper() in wanted or GENE_ALIASES.get(g.upper()) in wanted]
    found = {genes[i].upper() for i in idx} | {GENE_ALIASES.get(genes[i].upper()) for i in idx}
    return idx, [g for g in panel if g.upper() not in found]
