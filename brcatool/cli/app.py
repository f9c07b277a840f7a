"""The ``brcatool`` Typer app: one module per command, registered here."""

from __future__ import annotations

from typing import Annotated

import typer

from brcatool import __version__
from brcatool.cli import ablate, demo, embed, evaluate, prep_expr, report, synth, tile, train
from brcatool.cli import import_features as import_features_cli

app = typer.Typer(
    name="brcatool",
    help="Breast-cancer subtype prediction from whole-slide images and gene expression, "
    "with honest cross-validated evaluation. Stages read and write artifacts in one workdir.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"brcatool {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Breast-cancer subtype prediction from WSIs and expression."""


app.command("synth")(synth.synth)
app.command("tile")(tile.tile)
app.command("embed")(embed.embed)
app.command("import-features")(import_features_cli.import_features)
app.command("prep-expr")(prep_expr.prep_expr)
app.command("train")(train.train)
app.command("evaluate")(evaluate.evaluate)
app.command("ablate")(ablate.ablate)
app.command("report")(report.report)
app.command("demo")(demo.demo)


def main() -> None:
    app()
