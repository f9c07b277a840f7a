"""RNA-seq-like counts with PAM50 subtype programmes (negative binomial)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brcatool.expression import PAM50_GENES

#: Gene programmes of the PAM50 biology, in the spirit of Parker et al. (2009).
PROGRAMMES: dict[str, tuple[str, ...]] = {
    "luminal": ("ESR1", "PGR", "FOXA1", "BCL2", "NAT1", "MLPH", "SLC39A6", "CXXC5", "MAPT",
                "BAG1", "GPR160", "BLVRA", "MDM2"),
    "basal": ("KRT5", "KRT14", "KRT17", "FOXC1", "SFRP1", "MIA", "EGFR", "CDH3", "ACTR3B",
              "PHGDH"),
    "her2": ("ERBB2", "GRB7", "FGFR4", "TMEM45B", "MMP11"),
    "proliferation": ("MKI67", "BIRC5", "CCNB1", "CDC20", "CEP55", "KIF2C", "MELK", "MYBL2",
                      "NDC80", "NUF2", "PTTG1", "RRM2", "TYMS", "UBE2C", "UBE2T", "ANLN",
                      "CENPF", "CCNE1", "CDC6", "EXO1", "ORC6", "MYC"),
}

#: log2 fold change of each programme per subtype (before gene_signal scaling).
EFFECTS: dict[str, dict[str, float]] = {
    "LumA": {"luminal": 2.5, "basal": -1.5, "her2": 0.0, "proliferation": -1.0},
    "LumB": {"luminal": 2.0, "basal": -1.5, "her2": 0.5, "proliferation": 1.0},
    "Her2": {"luminal": -0.5, "basal": -0.5, "her2": 3.0, "proliferation": 1.5},
    "Basal": {"luminal": -2.5, "basal": 2.5, "her2": -0.5, "proliferation": 2.0},
    "Normal": {"luminal": 1.0, "basal": 1.0, "her2": 0.0, "proliferation": -1.5},
}


@dataclass(frozen=True)
class Counts:
    genes: list[str]  # row names, sorted
    counts: np.ndarray  # int64 (genes, samples)
    outlier_samples: list[int]  # column indices
    zero_genes: list[str]


def gene_names(n_genes: int) -> list[str]:
    """All PAM50 symbols plus filler genes ``GENE0001...``, sorted like a TCGA table."""
    fill = n_genes - len(PAM50_GENES)
    width = max(4, len(str(fill)))
    return sorted([*PAM50_GENES, *(f"GENE{i:0{width}d}" for i in range(1, fill + 1))])


def simulate_counts(subtypes: list[str], *, n_genes: int, gene_signal: float,
                    rng: np.random.Generator, outliers: int, zero_genes: int) -> Counts:
    """Counts (genes x samples) whose subtype programmes scale with ``gene_signal``.

    Each sample also gets subtype-independent programme activity noise, so classes overlap as
    in real data; ``gene_signal=0`` makes the counts independent of the subtype.
    """
    genes = gene_names(n_genes)
    g, n = len(genes), len(subtypes)
    index = {name: i for i, name in enumerate(genes)}
    pam = set(PAM50_GENES)
    is_pam = np.array([name in pam for name in genes])
    log_mu = rng.normal(np.log(150), 1.6, g)
    log_mu[is_pam] = rng.normal(np.log(800), 0.8, int(is_pam.sum()))
    dispersion = np.exp(rng.normal(np.log(0.12), 0.5, g))

    # loadings: programme genes fully, plus ~3 % of filler genes each (co-expressed modules)
    loadings = np.zeros((len(PROGRAMMES), g))
    filler = np.flatnonzero(~is_pam)
    for p, members in enumerate(PROGRAMMES.values()):
        loadings[p, [index[m] for m in members]] = 1.0
        picked = rng.choice(filler, size=max(1, len(filler) // 33), replace=False)
        loadings[p, picked] = rng.normal(0.6, 0.2, len(picked)) * rng.choice([-1, 1], len(picked))

    effect = np.array([[EFFECTS[s][p] for p in PROGRAMMES] for s in subtypes])  # (n, P)
    activity = gene_signal * effect * np.exp(rng.normal(0, 0.2, effect.shape))
    activity += rng.normal(0, 0.5, effect.shape)  # subtype-independent heterogeneity
    log2_fc = activity @ loadings  # (n, g)
    size_factor = np.exp(rng.normal(0, 0.25, n))
    mu = np.exp(log_mu)[None, :] * size_factor[:, None] * np.exp2(log2_fc)  # (n, g)
    r = 1.0 / dispersion
    counts = rng.negative_binomial(r[None, :], r[None, :] / (r[None, :] + mu)).T.astype(np.int64)

    out_cols = sorted(rng.choice(n, size=min(outliers, n), replace=False).tolist()) if n else []
    for c in out_cols:
        hit = rng.random(g) < 0.05
        counts[hit, c] = (counts[hit, c] + 1) * rng.integers(50, 400, int(hit.sum()))
    zeros = sorted(rng.choice(filler, size=min(zero_genes, len(filler)), replace=False).tolist())
    counts[zeros, :] = 0
    return Counts(genes=genes, counts=counts, outlier_samples=out_cols,
                  zero_genes=[genes[i] for i in zeros])
