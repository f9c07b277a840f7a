"""Fold fits as units of work (``train``/``ablate --dask``): a 2-worker Dask LocalCluster gives the
serial run's numbers exactly, finished fold records are reused and stale ones are not."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from brcatool import artifacts
from brcatool.ablation import AblateConfig, run_ablate
from brcatool.artifacts import Workdir
from brcatool.cli.app import app
from brcatool.cohort import load_cohort
from brcatool.errors import InputError
from brcatool.synth import make_prepared_workdir
from brcatool.training import CohortSource, TrainConfig, fold_jobs, load_fold_model, run_train
from brcatool.training.units import fit_unit, read_record

pytest.importorskip("distributed")

TINY = dict(folds=3, epochs=3, lr=3e-3, hidden=8, heads=2, batch_size=16, patience=6)


def _workdir(path: Path) -> Path:
    """The same small cohort (every call writes identical files) with some patients lacking a modality."""
    made = make_prepared_workdir(path, patients=36, patches=4, dim=8, genes=12, gene_signal=1.5,
                                 image_signal=1.5, seed=11, missing_expression=2, missing_slides=2)
    return made.workdir.root


def _oof(wd: Path, run: str) -> pl.DataFrame:
    return artifacts.read_parquet(Workdir(wd).run_dir(run) / "oof.parquet", schema="oof")


def _same_models(a: Path, b: Path) -> None:
    """Every fold's weights bit for bit (the checkpoint's config differs only in ``dask``)."""
    paths = sorted(p.relative_to(a) for p in a.rglob("model.pt"))
    assert paths and paths == sorted(p.relative_to(b) for p in b.rglob("model.pt"))
    for rel in paths:
        sa = torch.load(a / rel, weights_only=True)["state_dict"]
        sb = torch.load(b / rel, weights_only=True)["state_dict"]
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), rel


@pytest.fixture
def dispatched(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of units each Dask dispatch had to run (those without a finished record)."""
    from brcatool.training import stage

    calls: list[int] = []
    real = stage.run_fits

    def spy(jobs, dask, **kwargs):  # noqa: ANN001, ANN202 - stage.run_fits' signature
        calls.append(sum(read_record(job) is None for job in jobs))
        return real(jobs, dask, **kwargs)

    monkeypatch.setattr(stage, "run_fits", spy)
    return calls


def test_dask_ablate_equals_serial(tmp_path: Path, dispatched: list[int]) -> None:
    """Three fusions (one of them cross-attention), the sanity runs and the label null: the same
    out-of-fold probabilities, summary, null table and fold weights as the serial run."""
    cfg = AblateConfig(fusions=["gene", "late", "xattn"], sanity=True, permutations=2, name="t",
                       bootstrap=20, plots=False, run_plots=False, **TINY)
    serial_wd, dask_wd = _workdir(tmp_path / "serial"), _workdir(tmp_path / "dask")
    serial = run_ablate(serial_wd, cfg, progress=False)
    assert dispatched == []
    parallel = run_ablate(dask_wd, dataclasses.replace(cfg, dask="local:2"), progress=False)
    # one batch of (3 models + 2 sanity runs + 2 null re-fits) x 3 folds; the runs then only assemble
    assert dispatched[0] == 21 and not any(dispatched[1:]), dispatched

    assert list(serial.runs) == list(parallel.runs) and len(serial.runs) == 5  # 3 models + 2 sanity runs
    for label in serial.runs:
        run = serial.runs[label].name
        assert_frame_equal(_oof(serial_wd, run), _oof(dask_wd, run), check_exact=True)
        _same_models(serial.runs[label], parallel.runs[label])
    for table in ("summary.parquet", "null.parquet"):
        a = pl.read_parquet(serial.out_dir / table)
        b = pl.read_parquet(parallel.out_dir / table)
        assert_frame_equal(a, b, check_exact=True)
    assert not (dask_wd / ".train-parts").exists() or not any((dask_wd / ".train-parts").iterdir())


def test_dask_train_repeats_equal_serial(tmp_path: Path, dispatched: list[int]) -> None:
    serial_wd, dask_wd = _workdir(tmp_path / "serial"), _workdir(tmp_path / "dask")
    cfg = TrainConfig(fusion="concat", aggregator="abmil", repeats=2, name="r", **TINY)
    serial = run_train(serial_wd, cfg, progress=False)
    parallel = run_train(dask_wd, dataclasses.replace(cfg, dask="local:2"), progress=False)
    assert dispatched == [6]  # 2 repeats x 3 folds, one task each
    assert_frame_equal(_oof(serial_wd, "r"), _oof(dask_wd, "r"), check_exact=True)
    assert _oof(dask_wd, "r")["repeat"].unique().sort().to_list() == [0, 1]
    assert serial.per_fold == parallel.per_fold and serial.metrics == parallel.metrics
    _same_models(serial.run_dir, parallel.run_dir)
    assert (parallel.run_dir / "repeat_1_fold_2" / "model.pt").is_file()
    assert (parallel.run_dir / "epochs.csv").read_text() == (serial.run_dir / "epochs.csv").read_text()
    load_fold_model(parallel.run_dir / "repeat_0_fold_0" / "model.pt")  # a normal run's checkpoint
    # the same parameters, another executor: the finished run is reused, not refitted
    again = run_train(serial_wd, dataclasses.replace(cfg, dask="local:2"), progress=False)
    assert again.skipped


def test_finished_fold_records_are_reused_and_stale_ones_are_not(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Units run anywhere (here: in this process) leave records; a --dask run then starts no cluster
    and writes the serial run's numbers. A record made with other parameters is never read."""
    import brcatool.training.units as units

    wd = Workdir(_workdir(tmp_path / "w"))
    ref = run_train(_workdir(tmp_path / "ref"), TrainConfig(fusion="late", name="x", **TINY), progress=False)
    cfg = TrainConfig(fusion="late", name="x", dask="local:2", **TINY)
    cohort = load_cohort(wd, images=True, expression=True)
    jobs = fold_jobs(wd, cfg, cohort, source=CohortSource.of(wd, cfg, images=True, expression=True))
    assert len(jobs) == 3
    for job in jobs:
        assert read_record(job) is None
        assert fit_unit(job)["fold"] == job.fold
        assert read_record(job) is not None
    other = fold_jobs(wd, dataclasses.replace(cfg, lr=1e-2), cohort,
                      source=CohortSource.of(wd, cfg, images=True, expression=True))
    assert all(read_record(job) is None for job in other)  # same folders, other key

    # a cohort built in Python (no source to rebuild it from) travels with each job, never reused
    shipped = fold_jobs(wd, dataclasses.replace(cfg, name="y"), cohort)
    assert isinstance(shipped[0].source, type(cohort)) and shipped[0].key != jobs[0].key
    fit_unit(shipped[0])
    assert read_record(shipped[0]) is not None
    assert read_record(fold_jobs(wd, dataclasses.replace(cfg, name="y"), cohort)[0]) is None

    def no_cluster(*_a, **_k):
        raise AssertionError("every fold had a record: no executor should start")

    monkeypatch.setattr(units, "make_executor", no_cluster)
    res = run_train(wd, cfg, progress=False)
    assert_frame_equal(_oof(wd.root, "x"), _oof(ref.run_dir.parent.parent, "x"), check_exact=True)
    assert res.metrics == ref.metrics
    assert not wd.train_parts("x").exists()  # records folded into the run, then removed
    assert json.loads((res.run_dir / "manifest.json").read_text())["params"] == \
        json.loads((ref.run_dir / "manifest.json").read_text())["params"]  # --dask is not a parameter


def test_dask_without_distributed_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wd = _workdir(tmp_path / "w")
    monkeypatch.setitem(sys.modules, "distributed", None)
    for command in (["train", "--fusion", "gene", "--name", "g"], ["ablate", "--fusions", "gene,late"]):
        res = CliRunner().invoke(app, [*command, "-w", str(wd), "--folds", "3", "--epochs", "1",
                                       "--dask", "local:2", "-q"])
        assert res.exit_code == 1, res.output
        assert "brcatool[dask]" in res.output and "Traceback" not in res.output
        assert len(res.output.strip().splitlines()) == 1
    with pytest.raises(InputError, match="--dask needs"):
        TrainConfig(dask=" ").validate()


def test_a_failed_fold_keeps_the_others_records_and_raises_its_own_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every unit runs to the end (the executor here: in-process), the finished folds' records stay
    for the re-run, and the failed fold's one-line error is raised as it is."""
    import brcatool.training.units as units
    from brcatool.executors import SerialExecutor

    wd = Workdir(_workdir(tmp_path / "w"))
    cfg = TrainConfig(fusion="gene", name="f", dask="local:2", **TINY)
    jobs = fold_jobs(wd, cfg, load_cohort(wd, images=False, expression=True),
                     source=CohortSource.of(wd, cfg, images=False, expression=True))
    real = units.train_fold

    def fold_1_fails(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - train_fold's signature
        if kwargs["fold"] == 1:
            raise InputError("the training loss is not finite in fold 1", fix="lower --lr")
        return real(*args, **kwargs)

    monkeypatch.setattr(units, "train_fold", fold_1_fails)
    monkeypatch.setattr(units, "make_executor", SerialExecutor)
    done: list[int] = []
    with pytest.raises(InputError, match="not finite in fold 1"):
        units.run_fits(jobs, "local:2", on_done=lambda job: done.append(job.fold))
    assert done == [0, 2]
    assert [read_record(job) is not None for job in jobs] == [True, False, True]
