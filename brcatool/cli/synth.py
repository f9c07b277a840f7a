"""`brcatool synth`."""

from __future__ import annotations

from brcatool.cli.common import ConfigOpt, QuietOpt, SeedOpt, report_errors
from brcatool.errors import NotBuiltError


@report_errors
def synth(config: ConfigOpt = None, seed: SeedOpt = 0, quiet: QuietOpt = False) -> None:
    """(not built yet)"""
    raise NotBuiltError("`brcatool synth` is not built yet in this version")
