"""TCGA-like identifiers and subtype assignment, deterministic from a seed."""

from __future__ import annotations

import uuid

import numpy as np

from brcatool.tasks import SUBTYPES  # PROPORTIONS below follows its order

#: Approximate share in TCGA-BRCA of each of the PAM50 SUBTYPES.
PROPORTIONS: tuple[float, ...] = (0.45, 0.20, 0.09, 0.18, 0.08)

#: Tissue source site codes of real TCGA-BRCA contributors (only the look matters).
_SITES = ("A1", "A2", "A7", "A8", "AC", "AN", "AO", "AQ", "AR", "B6", "BH", "C8", "D8",
          "E2", "E9", "EW", "GM", "LL", "OL", "S3", "W8")
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def patient_barcodes(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` unique 12-character barcodes ``TCGA-XX-XXXX``."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        site = _SITES[int(rng.integers(len(_SITES)))]
        part = "".join(_ALNUM[int(i)] for i in rng.integers(len(_ALNUM), size=4))
        code = f"TCGA-{site}-{part}"
        if code not in seen:
            seen.add(code)
            out.append(code)
    return out


def sample_barcode(patient: str) -> str:
    """Primary-tumour sample barcode, as expression files name their columns."""
    return f"{patient}-01A"


def slide_name(patient: str, index: int, rng: np.random.Generator) -> str:
    """Diagnostic-slide id ``TCGA-XX-XXXX-01Z-00-DX<k>.<UUID>`` (no extension)."""
    uid = uuid.UUID(bytes=rng.bytes(16), version=4)
    return f"{patient}-01Z-00-DX{index + 1}.{str(uid).upper()}"


def assign_subtypes(n: int, rng: np.random.Generator) -> list[str]:
    """Stratified subtypes: TCGA-like shares, and both luminal and basal/HER2 once n >= 2.

    Largest-remainder rounding keeps small cohorts representative instead of leaving a
    class out by chance, so a 6-patient test cohort can still train a binary task.
    """
    shares = np.asarray(PROPORTIONS) * n
    counts = np.floor(shares).astype(int)
    order = np.argsort(-(shares - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    if n >= 2 and counts[SUBTYPES.index("Basal")] + counts[SUBTYPES.index("Her2")] == 0:
        counts[SUBTYPES.index("Basal")] += 1
        counts[int(np.argmax(counts))] -= 1
    if n >= 2 and counts[SUBTYPES.index("LumA")] == 0:
        counts[SUBTYPES.index("LumA")] += 1
        counts[int(np.argmax(counts))] -= 1
    labels = [s for s, c in zip(SUBTYPES, counts, strict=True) for _ in range(int(c))]
    rng.shuffle(labels)
    return labels
