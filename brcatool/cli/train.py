"""`brcatool train`."""

from __future__ import annotations

from brcatool.cli.common import ConfigOpt, QuietOpt, SeedOpt, WorkdirOpt, default_workdir, report_errors
from brcatool.errors import NotBuiltError


@report_errors
def train(
    workdir: WorkdirOpt = default_workdir(),
    config: ConfigOpt = None,
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """(not built yet)"""
    raise NotBuiltError("`brcatool train` is not built yet in this version")
