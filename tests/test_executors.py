"""Executors and sharding: the same tile units in-process, as concurrent shards, on a Dask cluster."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from brcatool import artifacts, executors, stores, zarr_io
from brcatool.artifacts import Workdir
from brcatool.errors import ArtifactError, InputError
from brcatool.executors import RunOptions, Shard, balanced_shards, make_executor
from brcatool.patchgrid import stable_hash
from brcatool.synth import make_cohort
from brcatool.tiling import PARTS, TileConfig, run_tile

BRCATOOL = [sys.executable, "-m", "brcatool"]


# --------------------------------------------------------------------------- shards and executors
def test_balanced_shards_are_deterministic_balanced_and_complete() -> None:
    weights = {f"s{i}": (i % 5) + 1 for i in range(23)}
    groups = balanced_shards(weights, 3)
    assert sorted(u for g in groups for u in g) == sorted(weights)  # each unit once
    loads = [sum(weights[u] for u in g) for g in groups]
    assert max(loads) - min(loads) <= max(weights.values())
    shuffled = dict(reversed(list(weights.items())))
    assert balanced_shards(shuffled, 3) == groups  # input order does not matter
    assert Shard.parse("2/3").take(weights) == [u for u in weights if u in groups[1]]
    for bad in ("0/2", "3/2", "a/b", "1"):
        with pytest.raises(InputError, match="K/N"):
            Shard.parse(bad)


@pytest.mark.parametrize("name", sorted(executors.EXECUTORS))
def test_every_executor_runs_units_and_turns_errors_into_results(name: str) -> None:
    opts = {"serial": RunOptions(), "process": RunOptions(workers=2),
            "dask": RunOptions(dask="local:2")}[name]
    jobs = [("a",), ("b",), (None,), ("c",)]  # stable_hash(None) raises in the unit
    with make_executor(opts) as ex:
        assert ex.name == name and ex.slots == (1 if name == "serial" else 2)
        out = dict(ex.map(stable_hash, jobs, lambda job, exc: f"failed: {type(exc).__name__}"))
    assert out == {("a",): stable_hash("a"), ("b",): stable_hash("b"), (None,): "failed: AttributeError",
                   ("c",): stable_hash("c")}


def test_missing_distributed_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import fails as if not installed
    with pytest.raises(InputError, match=r"brcatool\[dask\]"):
        make_executor(RunOptions(dask="local:2"))


# --------------------------------------------------------------------------- tile, run four ways
@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("scale")
    files = make_cohort(out / "c", patients=8, seed=1, slide_size=(1024, 768), genes=60, progress=False)
    cfg = TileConfig(slides=[str(files.slides_dir)], patches=6, patch_size=64, seed=2)
    ref = Workdir(out / "serial")
    run_tile(ref, cfg, progress=False)
    return files, cfg, ref


def _snapshot(wd: Workdir) -> dict:
    """Everything a tile run leaves that must not depend on how it ran (timings dropped)."""
    slides = artifacts.read_parquet(wd.slides_table, schema="slides").drop("seconds")
    patches = artifacts.read_parquet(wd.patches_table, schema="patches")
    arrays = {sid: np.asarray(stores.read_patches(wd, sid)[...]) for sid in stores.patch_slides(wd)}
    qc = {p.name: p.read_bytes() for p in sorted(wd.qc_dir.glob("*.png"))}
    return {"slides": slides, "patches": patches, "arrays": arrays, "qc": qc}


def _assert_same(a: dict, b: dict) -> None:
    assert a["slides"].sort("slide_id").equals(b["slides"].sort("slide_id"))
    assert a["patches"].equals(b["patches"])
    assert a["arrays"].keys() == b["arrays"].keys() and a["arrays"]
    for sid, arr in a["arrays"].items():
        assert np.array_equal(arr, b["arrays"][sid]), sid
    assert a["qc"] == b["qc"]


def _tile_args(cfg: TileConfig, wd: Path, *extra: str) -> list[str]:
    return [*BRCATOOL, "tile", *cfg.slides, "-w", str(wd), "-n", str(cfg.patches), "--patch-size",
            str(cfg.patch_size), "--seed", str(cfg.seed), "-q", *extra]


def test_concurrent_shards_equal_serial(cohort, tmp_path: Path) -> None:
    _, cfg, ref = cohort
    wd = tmp_path / "w"
    procs = [subprocess.Popen(_tile_args(cfg, wd, "--shard", f"{k}/2"), stderr=subprocess.PIPE, text=True)
             for k in (1, 2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    _assert_same(_snapshot(ref), _snapshot(Workdir(wd)))  # the last shard merged


def test_shard_then_merge_and_rerun(cohort, tmp_path: Path) -> None:
    _, cfg, ref = cohort
    wd = Workdir(tmp_path / "w")
    first = run_tile(wd, dataclasses.replace(cfg, shard="1/2"), progress=False)
    assert first.pending > 0 and not first.rows and not wd.slides_table.exists()
    with pytest.raises(ArtifactError, match="not tiled yet"):
        run_tile(wd, dataclasses.replace(cfg, merge=True), progress=False)
    again = run_tile(wd, dataclasses.replace(cfg, shard="1/2"), progress=False)
    per_patient = _patients(ref)
    assert again.n_skipped == sum(per_patient[p] for p in Shard.parse("1/2").take(per_patient)) > 0
    assert again.pending == first.pending  # shard 2's slides, untouched
    with pytest.raises(InputError, match="--overwrite with --shard"):
        run_tile(wd, dataclasses.replace(cfg, shard="2/2", overwrite=True), progress=False)
    second = run_tile(wd, dataclasses.replace(cfg, shard="2/2"), progress=False)
    assert second.pending == 0 and second.rows
    _assert_same(_snapshot(ref), _snapshot(wd))
    wd.slides_table.unlink()
    merged = run_tile(wd, dataclasses.replace(cfg, merge=True), progress=False)
    assert merged.n_skipped == sum(per_patient.values()) and merged.pending == 0
    _assert_same(_snapshot(ref), _snapshot(wd))


def _patients(wd: Workdir) -> dict[str, int]:
    df = artifacts.read_parquet(wd.slides_table, schema="slides")
    return dict(df.group_by("patient_id").len().iter_rows())


def test_dask_local_cluster_equals_serial(cohort, tmp_path: Path) -> None:
    _, cfg, ref = cohort
    wd = Workdir(tmp_path / "w")
    result = run_tile(wd, dataclasses.replace(cfg, dask="local:2"), progress=False)
    assert result.pending == 0 and result.n_skipped == 0
    _assert_same(_snapshot(ref), _snapshot(wd))


def _kill_mid_slide(cfg, wd: Workdir) -> list[Path]:
    """Start a shard, SIGKILL it while it holds a slide lock after one slide finished; the locks left
    on slides without a record (a kill between a patient's last record and its unlock leaves a lock
    on finished slides, which a resume skips without taking it over: that try does not count)."""
    parts = wd.root / PARTS
    proc = subprocess.Popen(_tile_args(cfg, wd.root, "--shard", "1/1"))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill while a slide is locked, after one finished
            held = list((parts / "locks").glob("*.lock")) if parts.is_dir() else []
            records = list((parts / "slides").glob("*.json")) if parts.is_dir() else []
            if held and records:
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    if wd.slides_table.exists():
        return []
    locked = (parts / "locks").glob("*.lock")
    return [lk for lk in locked if not (parts / "slides" / f"{lk.stem}.json").exists()]


def test_shard_killed_mid_slide_resumes_identical(cohort, tmp_path: Path) -> None:
    _, cfg, ref = cohort
    for attempt in range(5):  # on a loaded machine the slide may finish between the poll and the kill
        wd = Workdir(tmp_path / f"w{attempt}")
        left = _kill_mid_slide(cfg, wd)
        if left:
            break
    else:
        pytest.fail("five tries never killed the shard while it held a slide lock")
    assert not wd.slides_table.exists()
    resumed = run_tile(wd, cfg, progress=False)
    assert resumed.n_skipped >= 1 and resumed.took_over == len(left) >= 1
    _assert_same(_snapshot(ref), _snapshot(wd))
    assert not [p for p in wd.patches_zarr.iterdir() if p.name.startswith(".") and ".tmp-" in p.name]


def test_two_concurrent_runs_never_tile_one_slide_twice(cohort, tmp_path: Path) -> None:
    _, cfg, ref = cohort
    wd = tmp_path / "w"
    code = ("import json, sys; from brcatool.tiling import TileConfig, run_tile\n"
            f"r = run_tile({str(wd)!r}, TileConfig(**json.loads(sys.argv[1])), progress=False)\n"
            "print(json.dumps({'skipped': r.n_skipped, 'busy': r.busy}))")
    arg = json.dumps(dataclasses.asdict(cfg))
    procs = [subprocess.Popen([sys.executable, "-c", code, arg], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    total = artifacts.read_parquet(ref.slides_table, schema="slides").height
    processed = [total - o["skipped"] - o["busy"] for o in outs]
    assert sum(processed) == total  # every slide tiled by exactly one of the two
    _assert_same(_snapshot(ref), _snapshot(Workdir(wd)))
    assert pl.read_parquet(Workdir(wd).patches_table).height > 0


# --------------------------------------------------------------------------- embed, run four ways
def _embed_cfg(**kw):  # noqa: ANN003, ANN202
    from brcatool.embedding import EmbedConfig

    base = dict(encoder="resnet18", weights="random", batch_size=8, num_workers=0, precision="fp32",
                device="cpu", input_size=32)
    return EmbedConfig(**{**base, **kw})


def _features(wd: Workdir) -> dict[str, np.ndarray]:
    return {s: stores.read_features(wd, "resnet18", s) for s in stores.feature_slides(wd, "resnet18")}


@pytest.fixture(scope="module")
def embedded(cohort, tmp_path_factory: pytest.TempPathFactory):
    from brcatool.embedding import run_embed

    _, _, ref = cohort
    wd = Workdir(tmp_path_factory.mktemp("embedded") / "w")
    import shutil

    shutil.copytree(ref.root, wd.root)
    run_embed(wd, _embed_cfg(), progress=False)
    return wd, _features(wd), pl.read_parquet(wd.features_index("resnet18"))


def _assert_same_features(embedded, wd: Workdir) -> None:
    _, feats, index = embedded
    got = _features(wd)
    assert got.keys() == feats.keys() and feats
    for sid, arr in feats.items():
        assert np.array_equal(arr, got[sid]), sid
    assert pl.read_parquet(wd.features_index("resnet18")).equals(index)
    from brcatool.embedding import feature_manifest

    assert feature_manifest(wd, "resnet18")["status"] == "complete"


def _fresh(cohort, tmp_path: Path) -> Workdir:
    import shutil

    _, _, ref = cohort
    wd = Workdir(tmp_path / "w")
    shutil.copytree(ref.root, wd.root)
    return wd


def test_embed_shards_then_merge_equal_serial(cohort, embedded, tmp_path: Path) -> None:
    from brcatool.embedding import run_embed

    wd = _fresh(cohort, tmp_path)
    first = run_embed(wd, _embed_cfg(shard="2/2"), progress=False)
    assert first.pending > 0 and not wd.features_index("resnet18").exists()
    with pytest.raises(ArtifactError, match="not embedded yet"):
        run_embed(wd, _embed_cfg(merge=True), progress=False)
    last = run_embed(wd, _embed_cfg(shard="1/2"), progress=False)
    assert last.pending == 0 and first.slides_embedded + last.slides_embedded == len(embedded[1])
    _assert_same_features(embedded, wd)


def test_embed_concurrent_shard_processes_equal_serial(cohort, embedded, tmp_path: Path) -> None:
    wd = _fresh(cohort, tmp_path)
    args = ["-w", str(wd.root), "--encoder", "resnet18", "--weights", "random", "--batch-size", "8",
            "--num-workers", "0", "--precision", "fp32", "--device", "cpu", "--input-size", "32", "-q"]
    procs = [subprocess.Popen([*BRCATOOL, "embed", *args, "--shard", f"{k}/2"], stderr=subprocess.PIPE,
                              text=True) for k in (1, 2)]
    assert [p.wait(timeout=180) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    _assert_same_features(embedded, wd)


def test_embed_dask_local_cluster_equals_serial(cohort, embedded, tmp_path: Path) -> None:
    from brcatool.embedding import run_embed

    wd = _fresh(cohort, tmp_path)
    res = run_embed(wd, _embed_cfg(dask="local:2"), progress=False)
    assert res.pending == 0 and res.slides_embedded == len(embedded[1])
    _assert_same_features(embedded, wd)


def test_no_pixels_embed_equals_stored_pixels(cohort, embedded, tmp_path: Path) -> None:
    from brcatool.embedding import run_embed

    files, cfg, ref = cohort
    wd = Workdir(tmp_path / "w")
    result = run_tile(wd, dataclasses.replace(cfg, no_pixels=True), progress=False)
    assert result.n_patches > 0 and not wd.patches_zarr.exists()
    assert artifacts.read_parquet(wd.patches_table, schema="patches").equals(
        artifacts.read_parquet(ref.patches_table, schema="patches"))
    run_embed(wd, _embed_cfg(), progress=False)  # reads every patch from its slide
    _assert_same_features(embedded, wd)


def test_store_created_meanwhile_by_another_process_is_kept(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Group creation races: while this process builds its new group beside the final name, another
    creates the group there and writes a slide into it; that group (and slide) must survive."""
    wd = Workdir(tmp_path / "w")
    real = zarr_io._create_group
    other = {"done": False}

    def racing(path, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if ".tmp-" in str(path) and not other["done"]:
            other["done"] = True  # "another process" wins the race right now
            stores.write_patches(wd, "theirs", np.full((2, 8, 8, 3), 7, np.uint8))
        return real(path, *a, **kw)

    monkeypatch.setattr(zarr_io, "_create_group", racing)
    stores.write_patches(wd, "mine", np.zeros((3, 8, 8, 3), np.uint8))
    assert other["done"] and stores.patch_slides(wd) == ["mine", "theirs"]
    assert int(np.asarray(stores.read_patches(wd, "theirs")[0, 0, 0, 0])) == 7
    assert not [p for p in wd.root.iterdir() if ".tmp-" in p.name]  # no debris left


def test_concurrent_writers_create_the_store_once_and_keep_every_array(tmp_path: Path) -> None:
    """Several processes start on an empty workdir at once: each creates the group if missing, and
    no creator replaces a group another already filled (zarr_io.ensure_group's plain rename)."""
    code = ("import sys, numpy as np\nfrom brcatool import stores\nfrom brcatool.artifacts import Workdir\n"
            "wd = Workdir(sys.argv[1])\n"
            "for k in range(3):\n"
            "    stores.write_patches(wd, f'{sys.argv[2]}-{k}', np.full((2, 8, 8, 3), k, np.uint8))\n")
    roots = [tmp_path / f"w{i}" for i in range(3)]
    procs = [subprocess.Popen([sys.executable, "-c", code, str(r), name]) for r in roots for name in "abc"]
    assert [p.wait(timeout=120) for p in procs] == [0] * len(procs)
    for r in roots:
        assert stores.patch_slides(Workdir(r)) == sorted(f"{n}-{k}" for n in "abc" for k in range(3))
        assert zarr_io.open_group(Workdir(r).patches_zarr, schema="patch-store") is not None
