"""Class 8 of issue 18: corrupt artifacts and crashed workers are one line naming the artifact and
the fix, never a traceback; debris of a killed run is cleaned by the next run and never listed."""

from __future__ import annotations

import os
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from brcatool import artifacts, outputs, stores
from brcatool.artifacts import Workdir
from brcatool.cli.app import app
from brcatool.cli.common import report_errors
from brcatool.errors import ArtifactError, BrcaError


def _chunks(array_dir: Path) -> list[Path]:
    return sorted(p for p in array_dir.rglob("*") if p.is_file() and p.name != "zarr.json")


def _damage(path: Path, rng: random.Random, kind: int) -> None:
    data = bytearray(path.read_bytes())
    if kind == 0:
        data = data[: rng.randrange(len(data))]  # cut short (a kill mid-copy, a full disk)
    elif kind == 1:
        data = bytearray(rng.randbytes(rng.randint(0, 200)))  # garbage
    else:
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)  # one flipped bit
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("seed", range(12))
def test_corrupt_feature_chunks_are_one_line(tmp_path: Path, seed: int) -> None:
    from brcatool.cohort import load_cohort
    from brcatool.synth import make_prepared_workdir

    rng = random.Random(seed)
    prepared = make_prepared_workdir(tmp_path / "wd", patients=8, patches=3, dim=4, genes=8, seed=seed)
    wd = prepared.workdir
    sid = rng.choice(stores.feature_slides(wd, prepared.encoder))
    chunk = rng.choice(_chunks(wd.features_zarr(prepared.encoder) / sid))
    _damage(chunk, rng, seed % 3)
    with pytest.raises(ArtifactError) as err:
        load_cohort(wd, images=True, expression=False)
    line = err.value.one_line()
    assert sid in line and "embed" in line and "\n" not in line
    res = CliRunner().invoke(app, ["train", "-w", str(wd.root), "--fusion", "image", "--aggregator", "mean",
                                   "--folds", "2", "--epochs", "1", "-q"])
    assert res.exit_code == 1 and "Traceback" not in res.output and sid in res.output


@pytest.mark.parametrize(("kind", "workers"), [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_corrupt_patch_chunk_stops_embed_with_one_line(tmp_path: Path, kind: int, workers: int) -> None:
    from brcatool.embedding import EmbedConfig, run_embed
    from brcatool.synth.patches import make_patch_workdir

    wd = make_patch_workdir(tmp_path / "wd", slides=2, patches=[3, 2], size=32, seed=kind)
    sid = stores.patch_slides(wd)[1]
    _damage(_chunks(wd.patches_zarr / sid)[0], random.Random(kind), kind)
    cfg = EmbedConfig(encoder="resnet18", weights="random", batch_size=2, num_workers=workers,
                      precision="fp32", device="cpu")
    with pytest.raises(ArtifactError) as err:
        run_embed(wd, cfg, progress=False)
    line = err.value.one_line()  # names the damaged array (the slide) and says to re-run
    assert str(wd.patches_zarr / sid) in line and "re-run `brcatool tile`" in line, line
    assert "Traceback" not in line and "\n" not in line


def _metrics_run(tmp_path: Path):
    from brcatool.synth import make_prepared_workdir
    from brcatool.training import TrainConfig, run_train

    prepared = make_prepared_workdir(tmp_path / "wd", patients=12, patches=2, dim=4, genes=8)
    run_train(prepared.workdir, TrainConfig(fusion="gene", folds=2, epochs=1, patience=1, name="m",
                                            device="cpu"), progress=False)
    return prepared.workdir


def test_metrics_json_missing_any_key_is_one_line(tmp_path: Path) -> None:
    from brcatool.evaluation import _EVAL_KEYS

    wd = _metrics_run(tmp_path)
    args = ["evaluate", "-w", str(wd.root), "--run", "m", "--bootstrap", "20", "--no-plots", "-q"]
    assert CliRunner().invoke(app, args).exit_code == 0
    run_json, eval_json = wd.run_dir("m") / "metrics.json", wd.run_dir("m") / "eval" / "metrics.json"
    keep_run, keep_eval = run_json.read_text(), eval_json.read_text()
    cases = [(run_json, "classes")] + [(eval_json, k) for k in _EVAL_KEYS]
    for path, key in cases:
        data = artifacts.read_json(path)
        del data[key]
        artifacts.write_json(path, data)
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 1 and "Traceback" not in res.output, (key, res.output)
        assert f"lacks '{key}'" in res.output and "--overwrite" in res.output, (key, res.output)
        run_json.write_text(keep_run)
        eval_json.write_text(keep_eval)
    for path in (run_json, eval_json):  # not JSON at all
        path.write_text("{ cut mid")
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 1 and "is not valid JSON" in res.output and "Traceback" not in res.output
        run_json.write_text(keep_run)
        eval_json.write_text(keep_eval)


def _die() -> None:
    os._exit(9)  # what the OOM killer or kill -9 does to a worker


def test_a_killed_worker_process_is_one_line() -> None:
    @report_errors
    def stage() -> None:
        with ProcessPoolExecutor(1) as pool:
            pool.submit(_die).result()

    with pytest.raises(typer.Exit) as exit_info:
        stage()
    assert exit_info.value.exit_code == 1


def test_errors_re_raised_from_dataloader_workers_keep_their_one_line() -> None:
    import torch

    class Broken(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int):
            raise ArtifactError("cannot read slide 's1'", path="/wd/patches.zarr/s1", fix="re-run tile")

    loader = torch.utils.data.DataLoader(Broken(), batch_size=None, num_workers=1)
    with pytest.raises(BrcaError) as err:
        next(iter(loader))
    assert err.value.one_line() == "/wd/patches.zarr/s1: cannot read slide 's1' (fix: re-run tile)"


def test_clean_debris_removes_only_temporaries(tmp_path: Path) -> None:
    rng = random.Random(0)
    keep = ["TCGA-AA-0001", ".hidden", "a.tmp-zzzzzzzz", ".a.tmp-123", "zarr.json", ".a.tmp-0123abcdx"]
    debris = [f".{name}.tmp-{rng.getrandbits(32):08x}" for name in ("TCGA-AA-0001", "s~1f", "x.json", "a.b")]
    for name in keep + debris:
        (tmp_path / name).mkdir() if rng.random() < 0.5 else (tmp_path / name).write_text("x")
    removed = outputs.clean_debris(tmp_path, finals=["x.json"])
    assert [p.name for p in removed] == [d for d in debris if d.startswith(".x.json")]
    removed = outputs.clean_debris(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_debris_of_a_killed_run_is_cleaned_by_the_next_one(tmp_path: Path, small_cohort) -> None:
    import zarr

    from brcatool.embedding import EmbedConfig, run_embed
    from brcatool.tiling import TileConfig, run_tile

    slides = sorted(small_cohort.slides_dir.glob("*.tif*"))[:2]
    wd = Workdir(tmp_path / "wd")
    cfg = TileConfig(slides=[str(s) for s in slides], patches=2, patch_size=32, mpp_fallback=0.5)
    run_tile(wd, cfg, progress=False)
    ecfg = EmbedConfig(encoder="resnet18", weights="random", batch_size=4, num_workers=0,
                       precision="fp32", device="cpu")
    run_embed(wd, ecfg, progress=False)
    sid = stores.patch_slides(wd)[0]
    for store in (wd.patches_zarr, wd.features_zarr("resnet18")):  # what a kill -9 mid-write leaves
        zarr.create_array(store=str(store / f".{sid}.tmp-0badc0de"), shape=(2, 2), dtype="u1")
    assert any(".tmp-" in m for m in zarr.open_group(str(wd.patches_zarr), mode="r").array_keys())
    run_tile(wd, cfg, progress=False)
    run_embed(wd, ecfg, progress=False)
    for store in (wd.patches_zarr, wd.features_zarr("resnet18")):
        assert not [p for p in store.iterdir() if ".tmp-" in p.name]
        assert not any(".tmp-" in m for m in zarr.open_group(str(store), mode="r").array_keys())
    assert np.asarray(stores.read_patches(wd, sid)[...]).shape[0] >= 1


def test_tile_debris_outside_the_store_is_cleaned_too(tmp_path: Path, small_cohort) -> None:
    from brcatool.tiling import TileConfig, run_tile

    slides = sorted(small_cohort.slides_dir.glob("*.tif*"))[:2]
    wd = Workdir(tmp_path / "wd")
    cfg = TileConfig(slides=[str(s) for s in slides], patches=2, patch_size=32, mpp_fallback=0.5)
    run_tile(wd, cfg, progress=False)
    debris = [wd.root / ".patches.parquet.tmp-0badc0de", wd.root / ".slides.parquet.tmp-12345678",
              wd.tile_parts / "slides" / ".x.json.tmp-abcdef01", wd.qc_dir / ".x.png.tmp-abcdef02",
              wd.stage_manifest("tile").parent / ".tile.json.tmp-abcdef03"]
    keep = wd.root / ".expression.parquet.tmp-abcdef04"  # another stage's: not tile's to remove
    for p in [*debris, keep]:
        p.write_bytes(b"half written")
    run_tile(wd, cfg, progress=False)
    assert not any(p.exists() for p in debris) and keep.exists()
