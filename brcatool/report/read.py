"""Tolerant readers: the report shows what a workdir holds and never stops at a broken file.

A stage's outputs may be missing (not run yet), half written by another helper's newer code, or
made by an older brcatool. Each reader returns ``None`` for "not there" and records a note for
"there but unreadable", so the page can say so instead of failing.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brcatool import artifacts
from brcatool.errors import BrcaError


@dataclass
class Notes:
    """Problems met while reading, shown at the top of the page."""

    items: list[str] = field(default_factory=list)

    def add(self, path: Path | str, message: str) -> None:
        self.items.append(f"{path}: {message}")


def json_file(path: Path, notes: Notes) -> Any:
    if not path.is_file():
        return None
    try:
        return artifacts.read_json(path)
    except BrcaError as exc:
        notes.add(path, exc.message)
        return None


def text_file(path: Path, notes: Notes) -> str | None:
    if not path.is_file():
        return None
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        notes.add(path, f"unreadable ({exc})")
        return None


def table(path: Path, notes: Notes) -> Any:
    """A Parquet table as a polars DataFrame, whatever its schema stamp (the report only shows it)."""
    if not path.is_file():
        return None
    import polars as pl

    try:
        return pl.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any pyarrow/polars failure: an unreadable file
        notes.add(path, f"not a readable Parquet file ({type(exc).__name__})")
        return None


def number(x: Any) -> float | None:
    """A finite float, or None (JSON stores NaN as null or a string, depending on the writer)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def duration(manifest: dict[str, Any]) -> float | None:
    """Seconds between a manifest's ``started`` and ``finished``, or its own ``seconds``."""
    if number(manifest.get("seconds")) is not None:
        return number(manifest.get("seconds"))
    try:
        t0 = _dt.datetime.fromisoformat(str(manifest["started"]))
        t1 = _dt.datetime.fromisoformat(str(manifest["finished"]))
    except (KeyError, ValueError):
        return None
    seconds = (t1 - t0).total_seconds()
    return seconds if seconds > 0 else None  # stamps in whole seconds: 0 says nothing


def pngs(folder: Path, first: tuple[str, ...] = ()) -> list[Path]:
    """PNG files of a folder, the names in ``first`` leading in that order, then the rest sorted."""
    if not folder.is_dir():
        return []
    found = {p.name: p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")}
    lead = [found.pop(n) for n in first if n in found]
    return lead + [found[n] for n in sorted(found)]
