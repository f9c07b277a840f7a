"""Class 4 of issue 18: concurrent runs on one workdir never mix. Two tile runs with other
parameters: one finishes, the other is refused with one line; with the same parameters they share
the work. A stage lock held by a live process refuses a second run; a dead holder's is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from brcatool import outputs
from brcatool.artifacts import Workdir
from brcatool.locks import LockBusy


def _tile(wd: Path, slides: Path, patches: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "brcatool", "tile", str(slides), "-w", str(wd),
                             "--patches", str(patches), "--patch-size", "32", "--mpp-fallback", "0.5", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("order", [(2, 3), (3, 2)])
def test_two_tile_runs_with_other_parameters_never_mix(tmp_path: Path, small_cohort, order) -> None:
    wd = tmp_path / "wd"
    procs = [_tile(wd, small_cohort.slides_dir, p) for p in order]
    results = [(p.wait(timeout=600), p.stdout.read()) for p in procs]
    assert "Traceback" not in "".join(out for _, out in results)
    assert sorted(code for code, _ in results) == [0, 1], results  # whatever the timing
    winner = order[[code for code, _ in results].index(0)]
    loser_out = [out for code, out in results if code == 1][0]
    assert "with other parameters" in loser_out and len(loser_out.strip().splitlines()) == 1, loser_out
    manifest = json.loads((wd / "manifests" / "tile.json").read_text())
    assert manifest["params"]["patches"] == winner
    table = pl.read_parquet(wd / "patches.parquet")
    per_patient = table.group_by("patient_id").len()["len"].to_list()
    assert max(per_patient) == winner  # only the winner's patches: nothing mixed in
    assert pl.read_parquet(wd / "slides.parquet")["n_patches"].sum() == table.height


def test_two_tile_runs_with_the_same_parameters_share_the_work(tmp_path: Path, small_cohort) -> None:
    single = tmp_path / "single"
    assert _tile(single, small_cohort.slides_dir, 2).wait(timeout=600) == 0
    wd = tmp_path / "wd"
    procs = [_tile(wd, small_cohort.slides_dir, 2) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stdout.read()) for p in procs]
    assert [code for code, _ in results] == [0, 0], results
    a = pl.read_parquet(wd / "patches.parquet").sort("slide_id", "patch_index")
    b = pl.read_parquet(single / "patches.parquet").sort("slide_id", "patch_index")
    assert a.equals(b)


def test_a_held_stage_lock_refuses_with_one_line_and_a_dead_holder_is_taken_over(tmp_path: Path) -> None:
    from brcatool.embedding import EmbedConfig, run_embed
    from brcatool.synth.patches import make_patch_workdir

    wd = make_patch_workdir(tmp_path / "wd", slides=1, patches=2, size=32)
    cfg = EmbedConfig(encoder="resnet18", weights="random", batch_size=2, num_workers=0, precision="fp32",
                      device="cpu")
    with outputs.stage_lock(wd, "embed-resnet18"):
        with pytest.raises(LockBusy) as err:
            run_embed(wd, cfg, progress=False)
        assert f"pid {os.getpid()}" in err.value.one_line() and "\n" not in err.value.one_line()
    # a lock left by a process that is gone (kill -9) does not block the next run
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = Workdir(wd.root).root / ".locks" / "embed-resnet18.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "proc_start": None,
                                "started": time.time(), "token": "x"}))
    assert run_embed(wd, cfg, progress=False).slides_embedded == 1
    assert not lock.exists()


@pytest.mark.parametrize("same", [True, False])
def test_a_split_saved_by_a_concurrent_first_run_is_never_overwritten(
        tmp_path: Path, same: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from brcatool.errors import ArtifactError
    from brcatool.splits import load_splits, make_splits, save_splits
    from brcatool.synth import make_prepared_workdir
    from brcatool.training import TrainConfig, run_train
    from brcatool.training import stage as train_stage

    prepared = make_prepared_workdir(tmp_path / "wd", patients=14, patches=2, dim=4, genes=8)
    wd = prepared.workdir
    real = train_stage.train_fold

    def other_run_finishes_first(cohort, *a, **k):  # the other run saves its split meanwhile
        if not wd.splits.exists():
            save_splits(make_splits(cohort, folds=2 if same else 3, seed=0), wd.splits)
        return real(cohort, *a, **k)

    monkeypatch.setattr(train_stage, "train_fold", other_run_finishes_first)
    cfg = TrainConfig(fusion="gene", folds=2, epochs=1, patience=1, name="mine", device="cpu")
    if same:
        res = run_train(wd, cfg, progress=False)
        assert res.splits_created and load_splits(wd.splits).folds == 2
    else:
        with pytest.raises(ArtifactError, match="saved by another run"):
            run_train(wd, cfg, progress=False)
        assert load_splits(wd.splits).folds == 3 and not wd.run_dir("mine").exists()


def test_a_second_evaluation_of_one_run_at_the_same_time_refuses(tmp_path: Path) -> None:
    from brcatool.evaluation import EvaluateConfig, run_evaluate
    from brcatool.synth import make_prepared_workdir
    from brcatool.training import TrainConfig, run_train

    prepared = make_prepared_workdir(tmp_path / "wd", patients=12, patches=2, dim=4, genes=8)
    wd = prepared.workdir
    run_train(wd, TrainConfig(fusion="gene", folds=2, epochs=1, patience=1, name="r", device="cpu"),
              progress=False)
    out_dir = wd.run_dir("r") / "eval"
    with outputs.stage_lock(wd, f"replace-evaluate-{outputs.replace_key([out_dir])}"):  # the first
        with pytest.raises(LockBusy):
            run_evaluate(wd, EvaluateConfig(run="r", bootstrap=10), progress=False)
        assert not out_dir.exists()
    assert run_evaluate(wd, EvaluateConfig(run="r", bootstrap=10), progress=False).out_dir == out_dir
