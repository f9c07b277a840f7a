"""``run_report``: one self-contained HTML page for a workdir, at any stage of completion."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from brcatool import artifacts
from brcatool.artifacts import Workdir
from brcatool.errors import InputError

REPORT_NAME = "report.html"


@dataclass
class ReportConfig:
    """Options of ``brcatool report`` (defaults = the CLI's)."""

    out: str | None = None  # the HTML file; None = <workdir>/report.html
    runs: list[str] = field(default_factory=list)  # run names under runs/; empty = every finished run
    patients: int = 6  # patients per run in the Interpretability section
    thumb_side: int = 320  # longest side (px) of a slide thumbnail in the grid
    title: str | None = None

    def validate(self) -> None:
        if self.patients < 0:
            raise InputError("--patients must be >= 0")
        if not 64 <= self.thumb_side <= 2048:
            raise InputError(f"--thumb-side must be between 64 and 2048 px, got {self.thumb_side}")


@dataclass
class ReportResult:
    path: Path
    sections: dict[str, bool]  # section id -> whether its stage had run
    images: int  # images inlined
    bytes: int  # size of the page
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        done = [k for k, v in self.sections.items() if v]
        todo = [k for k, v in self.sections.items() if not v]
        line = (f"report: {self.path} ({self.bytes / 1e6:.1f} MB, {self.images} images inlined); "
                f"sections with content: {', '.join(done) or 'none'}")
        return line + (f"; not run yet: {', '.join(todo)}" if todo else "")


def out_path(wd: Workdir, cfg: ReportConfig) -> Path:
    return Path(cfg.out) if cfg.out else wd.root / REPORT_NAME


def run_report(workdir: Path | Workdir, cfg: ReportConfig | None = None) -> ReportResult:
    """Read the workdir's artifacts and write the page atomically; returns where and what it holds."""
    from brcatool.report.collect import SECTIONS, collect
    from brcatool.report.render import render

    t0 = time.perf_counter()
    cfg = cfg or ReportConfig()
    cfg.validate()
    wd = workdir if isinstance(workdir, Workdir) else Workdir(Path(workdir))
    if not wd.root.is_dir():
        raise InputError("workdir not found", path=wd.root, fix="pass the --workdir the stages wrote to")
    data = collect(wd, runs=list(cfg.runs), patients=cfg.patients, thumb_side=cfg.thumb_side, title=cfg.title)
    html = render(data)
    path = out_path(wd, cfg)
    artifacts.write_text(path, html)
    return ReportResult(path=path, sections={sid: bool(data[sid]["ran"]) for sid, _ in SECTIONS},
                        images=html.count('src="data:image/'), bytes=len(html.encode()), notes=data["notes"],
                        seconds=time.perf_counter() - t0)
