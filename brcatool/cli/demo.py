"""`brcatool demo`."""

from __future__ import annotations

from brcatool.cli.common import QuietOpt, WorkdirOpt, default_workdir, report_errors
from brcatool.errors import NotBuiltError


@report_errors
def demo(workdir: WorkdirOpt = default_workdir(), quiet: QuietOpt = False) -> None:
    """(not built yet)"""
    raise NotBuiltError("`brcatool demo` is not built yet in this version")
