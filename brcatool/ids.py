"""Sample and patient ids: TCGA barcodes (patient = 12 characters; sample type at characters 14-15).

The bottom floor shared by the expression readers and the label tasks.
"""

from __future__ import annotations

import re

TCGA_BARCODE = re.compile(r"^TCGA[-.]([A-Z0-9]{2})[-.]([A-Z0-9]{4})(?:[-.](\d{2})([A-Z])?)?", re.IGNORECASE)
_GSM = re.compile(r"^GSM\d+$", re.IGNORECASE)
#: A TCGA slide barcode's slide type (DX diagnostic, TS/BS frozen top/bottom): ``...-01Z-00-DX1``.
_SLIDE_TYPE = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}-\d{2}[A-Z]?-\d{2}-([A-Z]{2})\d*", re.IGNORECASE)


def parse_barcode(sample: str) -> tuple[str, str | None, str] | None:
    """(patient, sample type, vial) of a TCGA barcode, or None for other ids."""
    m = TCGA_BARCODE.match(sample.strip())
    if not m:
        return None
    patient = f"TCGA-{m.group(1)}-{m.group(2)}".upper()
    return patient, m.group(3), (m.group(4) or "").upper()


def patient_of(sample: str) -> str:
    """Patient id: first 12 characters of a TCGA barcode (dots read as dashes), else the id itself."""
    parsed = parse_barcode(sample)
    return parsed[0] if parsed else sample.strip()


def slide_type(slide_id: str) -> str | None:
    """``DX``, ``TS``, ``BS``... of a TCGA slide barcode, upper case; None for other names."""
    m = _SLIDE_TYPE.match(slide_id)
    return m.group(1).upper() if m else None


def is_sample_id(value: str) -> bool:
    """A TCGA barcode or a GEO sample accession (GSM...)."""
    return bool(TCGA_BARCODE.match(value) or _GSM.match(value))
