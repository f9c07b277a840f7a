"""The one synthetic-data factory: TCGA-like cohorts for the demo, the tests and the benchmarks.

Names are imported lazily so ``import brcatool.synth`` stays light (no opencv/tifffile).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from brcatool.synth.cohort import CohortFiles, SlideTruth, make_cohort
    from brcatool.synth.prepared import make_prepared_workdir

# name -> module that defines it
_LAZY = {
    "make_cohort": "brcatool.synth.cohort",
    "CohortFiles": "brcatool.synth.cohort",
    "SlideTruth": "brcatool.synth.cohort",
    "make_prepared_workdir": "brcatool.synth.prepared",
}

__all__ = ["CohortFiles", "SlideTruth", "make_cohort", "make_prepared_workdir"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'brcatool.synth' has no attribute {name!r}")
