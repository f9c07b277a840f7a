"""What every source reader shares: the read options and the registry entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from brcatool.expression.readers import ExpressionTable, Peek

#: GDC STAR-count columns ``--gdc-value`` may pick (default first: normalised, comparable across samples).
GDC_VALUES = ("tpm_unstranded", "fpkm_uq_unstranded", "fpkm_unstranded", "unstranded", "stranded_first",
              "stranded_second")
GENE_IDS = ("symbol", "entrez")


@dataclass(frozen=True)
class ReadOptions:
    """Source options of prep-expr; a source refuses a non-default option it does not use."""

    samples_as_rows: bool | None = None
    sample_sheet: Path | None = None
    gdc_value: str = GDC_VALUES[0]
    gene_names: bool = False
    gene_id: str = GENE_IDS[0]
    workers: int | None = None

    def changed(self) -> list[str]:
        """Names of the options set to something other than their default."""
        return [f.name for f in fields(self) if getattr(self, f.name) != f.default]


#: The CLI spelling of each option, for messages.
FLAGS = {"samples_as_rows": "--samples-as-rows/--genes-as-rows", "sample_sheet": "--sample-sheet",
         "gdc_value": "--gdc-value", "gene_names": "--gene-names", "gene_id": "--gene-id",
         "workers": "--workers"}


@dataclass(frozen=True)
class Source:
    """One layout users download: how to recognise it and how to read it.

    ``detect`` sees a :class:`Peek` (a folder, or a file's name and header row) and answers
    whether the layout is unambiguously this one; ``read`` returns an :class:`ExpressionTable`
    with raw gene ids (cleaning and duplicates are resolved after, the same way for every source).
    """

    name: str
    description: str
    detect: Callable[[Peek], bool]
    read: Callable[[Path, ReadOptions], ExpressionTable]
    options: frozenset[str] = field(default_factory=frozenset)  # ReadOptions fields it uses
