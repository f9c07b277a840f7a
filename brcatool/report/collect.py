"""Read a workdir's artifacts into one plain dict: everything the page shows, nothing computed anew.

Each section is ``{"ran": bool, ...}``; a section whose stage has not run carries a ``hint``
(the command that makes it) instead of content.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from brcatool import __version__
from brcatool.artifacts import Workdir
from brcatool.report.interpret import interpret_section
from brcatool.report.provenance import provenance_section
from brcatool.report.read import Notes
from brcatool.report.results import ablation_section, runs_section, select_runs
from brcatool.report.study import cohort_section, slides_section

#: The page's sections, in order: (anchor id, heading).
SECTIONS = (("cohort", "Cohort"), ("slides", "Slides"), ("runs", "Runs"), ("ablation", "Ablation"),
            ("interpretability", "Interpretability"), ("provenance", "Provenance"))


def stage_status(wd: Workdir) -> list[dict[str, Any]]:
    """Which stages have finished outputs here (from their manifests)."""
    runs = wd.runs_dir
    evaluated = runs.is_dir() and any((p / "eval" / "manifest.json").is_file() for p in runs.iterdir())
    ablated = wd.ablations_dir.is_dir() and any((p / "manifest.json").is_file()
                                                for p in wd.ablations_dir.iterdir())
    return [{"name": "tile", "ran": wd.stage_manifest("tile").is_file()},
            {"name": "embed", "ran": bool(wd.available_encoders())},
            {"name": "prep-expr", "ran": wd.stage_manifest("prep-expr").is_file()},
            {"name": "train", "ran": bool(runs.is_dir() and any((p / "manifest.json").is_file()
                                                                 for p in runs.iterdir()))},
            {"name": "evaluate", "ran": bool(evaluated)},
            {"name": "ablate", "ran": bool(ablated)}]


def collect(wd: Workdir, *, runs: list[str] | None = None, patients: int = 6,
            thumb_side: int = 320, title: str | None = None) -> dict[str, Any]:
    """Everything the report shows, read from ``wd``'s artifacts (see the module doc)."""
    notes = Notes()
    run_dirs: list[Path] = select_runs(wd, runs)
    root = wd.root.resolve()
    return {
        "title": title or f"brcatool report: {root.name}",
        "workdir": str(wd.root), "workdir_abs": str(root), "version": __version__,
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "sections": [{"id": i, "title": t} for i, t in SECTIONS],
        "stages": stage_status(wd),
        "cohort": cohort_section(wd, notes),
        "slides": slides_section(wd, notes, thumb_side=thumb_side),
        "runs": runs_section(wd, notes, run_dirs),
        "ablation": ablation_section(wd, notes),
        "interpretability": interpret_section(wd, notes, run_dirs, patients),
        "provenance": provenance_section(wd, notes, run_dirs),
        "notes": notes.items,
    }
