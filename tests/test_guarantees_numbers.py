"""Class 5 of issue 18, end to end: a run whose loss or predictions go non-finite fails with one
line and saves nothing (no metrics computed from NaN, no split); evaluating it is one line too,
and so is evaluating a run whose stored predictions hold NaN (e.g. made by an older version)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from brcatool import artifacts
from brcatool.cli.app import app


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):
    from brcatool.synth import make_prepared_workdir

    return make_prepared_workdir(tmp_path_factory.mktemp("nan") / "wd", patients=16, patches=3, dim=4,
                                 genes=8)


@pytest.mark.parametrize(("fusion", "lr"), [("gene", "1e9"), ("concat", "1e9"), ("xattn", "1e12"),
                                            ("image", "1e30")])
def test_diverging_training_is_one_line_and_saves_nothing(prepared, fusion: str, lr: str) -> None:
    wd = prepared.workdir
    name = f"nan-{fusion}"
    res = CliRunner().invoke(app, ["train", "-w", str(wd.root), "--lr", lr, "--fusion", fusion,
                                   "--aggregator", "mean", "--folds", "2", "--epochs", "4", "--name", name,
                                   "-q"])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert "not finite" in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not wd.run_dir(name).exists() and not wd.splits.exists()
    res = CliRunner().invoke(app, ["evaluate", "-w", str(wd.root), "--run", name, "-q"])
    assert res.exit_code == 1 and "Traceback" not in res.output and "no finished run" in res.output


def test_evaluating_stored_nan_predictions_is_one_line(prepared) -> None:
    from brcatool.training import TrainConfig, run_train

    wd = prepared.workdir
    run_train(wd, TrainConfig(fusion="gene", folds=2, epochs=1, patience=1, name="ok", device="cpu"),
              progress=False)
    oof_path = wd.run_dir("ok") / "oof.parquet"
    oof = pl.read_parquet(oof_path)
    for rows in ([0], list(range(oof.height))):
        prob = oof["prob"].to_numpy().copy()
        prob[rows] = np.nan
        artifacts.write_parquet(oof.with_columns(pl.Series("prob", prob)), oof_path, schema="oof")
        res = CliRunner().invoke(app, ["evaluate", "-w", str(wd.root), "--run", "ok", "--overwrite", "-q"])
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert "internal error" not in res.output and "oof.parquet" in res.output, res.output
