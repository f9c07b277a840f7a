"""Class 9 of issue 18: a class too small for --folds is named (and nothing is saved), and an
'external' cohort that shares patients with training is refused with the count."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from brcatool import artifacts
from brcatool.cli.app import app
from brcatool.errors import InputError
from brcatool.splits import check_folds, make_splits


class _Cohort:  # what check_folds/make_splits read of a cohort
    def __init__(self, counts: tuple[int, ...]) -> None:
        self.classes = [f"C{i}" for i in range(len(counts))]
        self.targets = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
        self.patient_ids = [f"P{i:03d}" for i in range(len(self.targets))]
        self.n = len(self.targets)
        self.task = "t"

    def hash(self) -> str:
        return "h"


@pytest.mark.parametrize("counts", [c for c in itertools.product((0, 1, 2, 3, 5, 8), repeat=3)
                                    if sum(c) >= 2])
def test_check_folds_refuses_exactly_the_unsplittable_and_names_the_class(counts) -> None:
    cohort = _Cohort(counts)
    present = [n for n in counts]
    for folds in (2, 3, 5):
        ok = min(present) >= 2 and max(present) >= folds
        if ok:
            check_folds(cohort, folds)
            splits = make_splits(cohort, folds=folds, seed=1)
            for k in range(folds):  # every class is trained on in every fold
                tr, va = splits.indices(0, k)
                assert len(va) and set(cohort.targets[tr]) == set(range(len(counts)))
            continue
        with pytest.raises(InputError) as err:
            check_folds(cohort, folds)
        line = err.value.one_line()
        for i, n in enumerate(counts):
            if n < 2:
                assert f"'C{i}' has {n} patient" in line, line


def _one_patient_class(tmp_path: Path):
    from brcatool.synth import make_prepared_workdir

    prepared = make_prepared_workdir(tmp_path / "wd", patients=14, patches=2, dim=4, genes=8)
    wd = prepared.workdir
    labels = pl.read_parquet(wd.labels_table)
    minority = labels.filter(pl.col("target") == 1)["patient_id"].to_list()
    labels = labels.filter(~pl.col("patient_id").is_in(minority[1:]))  # one patient left in class 1
    artifacts.write_parquet(labels, wd.labels_table, schema="labels")
    return prepared


def test_a_one_patient_class_is_named_and_no_split_is_saved(tmp_path: Path) -> None:
    prepared = _one_patient_class(tmp_path)
    wd = prepared.workdir
    for folds in ("5", "3", "2"):
        res = CliRunner().invoke(app, ["train", "-w", str(wd.root), "--fusion", "gene", "--folds", folds,
                                       "--epochs", "1", "-q"])
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert f"class '{prepared.classes[1]}' has 1 patient" in res.output, res.output
        assert not wd.splits.exists() and not wd.runs_dir.exists()


def test_a_failed_first_run_saves_no_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from brcatool.synth import make_prepared_workdir
    from brcatool.training import TrainConfig, run_train
    from brcatool.training import stage as train_stage

    prepared = make_prepared_workdir(tmp_path / "wd", patients=14, patches=2, dim=4, genes=8)
    cfg = TrainConfig(fusion="gene", folds=3, epochs=1, patience=1, name="a", device="cpu")
    real = train_stage.train_fold

    def fails_in_fold_2(*a, **k):
        if k.get("fold") == 2:
            raise OSError(28, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(train_stage, "train_fold", fails_in_fold_2)
    with pytest.raises(OSError):
        run_train(prepared.workdir, cfg, progress=False)
    assert not prepared.workdir.splits.exists()
    monkeypatch.undo()
    run_train(prepared.workdir, TrainConfig(**{**cfg.__dict__, "folds": 2}), progress=False)
    assert artifacts.read_json(prepared.workdir.splits)["folds"] == 2  # the first success decides


@pytest.mark.parametrize("shared", [14, 5, 1])
def test_external_cohort_sharing_training_patients_is_refused_with_the_count(tmp_path: Path,
                                                                             shared: int) -> None:
    import shutil

    from brcatool.synth import make_prepared_workdir
    from brcatool.training import TrainConfig, run_train

    prepared = make_prepared_workdir(tmp_path / "wd", patients=14, patches=2, dim=4, genes=8)
    run_train(prepared.workdir, TrainConfig(fusion="gene", folds=2, epochs=1, patience=1, name="r",
                                            device="cpu"), progress=False)
    if shared == 14:
        other = prepared.workdir.root  # the training workdir itself
    else:
        other = tmp_path / "other"
        ext = make_prepared_workdir(other, patients=10, patches=2, dim=4, genes=8, seed=7)
        labels = pl.read_parquet(ext.workdir.labels_table)
        ids = labels["patient_id"].to_list()
        ids[:shared] = prepared.patient_ids[:shared]
        artifacts.write_parquet(labels.with_columns(pl.Series("patient_id", ids)), ext.workdir.labels_table,
                                schema="labels")
    res = CliRunner().invoke(app, ["evaluate", "-w", str(prepared.workdir.root), "--run", "r", "--on",
                                   str(other), "--bootstrap", "10", "-q"])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    total = 14 if shared == 14 else 10
    assert f"{shared} of its {total} patients were in the training cohort" in res.output, res.output
    assert not (prepared.workdir.run_dir("r") / "external").exists()
    shutil.rmtree(tmp_path / "other", ignore_errors=True)
