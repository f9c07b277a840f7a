"""The ``brcatool`` Typer app: one module per command, registered here.

``main`` registers only the command it is asked for (``brcatool tile ...`` imports and builds the
tile command alone: building all ten commands' ~200 options and importing their modules is ~40 ms
of every start); anything else (``brcatool --help``, an unknown or missing command) gets the whole
app. ``app`` (tests, ``typer.testing``) is the whole app.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated, Any

import typer

from brcatool import __version__

#: command -> its module under brcatool.cli, whose function of the same name it runs, in the
#: order ``--help`` lists them
COMMANDS = {"synth": "synth", "tile": "tile", "embed": "embed", "import-features": "import_features",
            "prep-expr": "prep_expr", "train": "train", "evaluate": "evaluate", "ablate": "ablate",
            "report": "report", "demo": "demo"}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"brcatool {__version__}")
        raise typer.Exit()


def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Breast-cancer subtype prediction from WSIs and expression."""


def build_app(only: str | None = None) -> typer.Typer:
    """The app with every command, or with command ``only`` alone."""
    new = typer.Typer(
        name="brcatool",
        help="Breast-cancer subtype prediction from whole-slide images and gene expression, "
        "with honest cross-validated evaluation. Stages read and write artifacts in one workdir.",
        no_args_is_help=True,
        pretty_exceptions_show_locals=False,
        add_completion=False,
        rich_markup_mode="rich",
    )
    new.callback()(root)
    for name, module in COMMANDS.items():
        if only is None or name == only:
            new.command(name)(getattr(importlib.import_module(f"brcatool.cli.{module}"), module))
    return new


def __getattr__(name: str) -> Any:
    if name == "app":
        globals()["app"] = full = build_app()
        return full
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    asked = sys.argv[1] if len(sys.argv) > 1 else None
    build_app(asked if asked in COMMANDS else None)()
