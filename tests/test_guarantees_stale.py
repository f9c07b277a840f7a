"""Class 3 of issue 18: a stage never silently uses upstream outputs that changed after it read
them. Each manifest records the fingerprints of what it consumed; readers refuse, naming the
stage to re-run. A slide replaced in place is re-tiled; a no-op re-run keeps fingerprints."""

from __future__ import annotations

import itertools
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from brcatool import artifacts, outputs
from brcatool.artifacts import Manifest, Workdir
from brcatool.cli.app import app
from brcatool.errors import ArtifactError

UPSTREAM = ("tile", "prep-expr", "embed (x)", "train:y")


def _write_upstream(wd: Workdir, stage: str, fp: str) -> Path:
    path = wd.root / "up" / f"{stage.replace(' ', '_').replace(':', '_')}.json"
    Manifest(stage, {}).write(path, fingerprint=fp)
    return path


@pytest.mark.parametrize("seed", range(25))
def test_stale_inputs_names_exactly_the_changed_upstreams(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    wd = Workdir(tmp_path)
    paths = {s: _write_upstream(wd, s, f"{rng.getrandbits(64):016x}") for s in UPSTREAM}
    used = [s for s in UPSTREAM if rng.random() < 0.7]
    consumer = tmp_path / "consumer" / "manifest.json"
    Manifest("x", {}).write(consumer, consumed=[outputs.consumed(wd, s, paths[s]) for s in used])
    changed = {s for s in UPSTREAM if rng.random() < 0.4}
    for s in changed:
        if rng.random() < 0.2:
            paths[s].unlink()  # removed counts as changed
        else:
            _write_upstream(wd, s, f"new-{rng.getrandbits(32):08x}")
    for s in set(UPSTREAM) - changed:  # rewritten with the same fingerprint: still fresh
        _write_upstream(wd, s, artifacts.read_json(paths[s])["fingerprint"]) if rng.random() < 0.5 else None
    expected = [s for s in used if s in changed]
    assert outputs.stale_inputs(wd, artifacts.read_json(consumer)) == expected
    if expected:
        with pytest.raises(ArtifactError, match="older") as err:
            outputs.check_fresh(wd, consumer, what="the thing", rerun="thing --overwrite")
        assert all(s in str(err.value) for s in expected) and "brcatool thing --overwrite" in str(err.value)
    else:
        outputs.check_fresh(wd, consumer, what="the thing", rerun="thing --overwrite")


@pytest.fixture()
def trained(tmp_path: Path):
    from brcatool.synth import make_prepared_workdir
    from brcatool.training import TrainConfig, run_train

    prepared = make_prepared_workdir(tmp_path / "wd", patients=16, patches=3, dim=4, genes=12)
    cfg = TrainConfig(fusion="concat", aggregator="mean", folds=2, epochs=2, patience=1, name="r",
                      device="cpu")
    run_train(prepared.workdir, cfg, progress=False)
    return prepared, cfg


def _redo_prep_expr(wd: Workdir, scale: float) -> None:
    """What `prep-expr --overwrite` with other inputs leaves: new tables, a new fingerprint."""
    import polars as pl

    from brcatool.expression import write_expression

    table = pl.read_parquet(wd.expression_table)
    genes = [c for c in table.columns if c != "patient_id"]
    values = table.select(genes).to_numpy().T * scale
    write_expression(wd.expression_table, table["patient_id"].to_list(), genes, values)
    Manifest("prep-expr", {"changed": scale}).write(
        wd.stage_manifest("prep-expr"),
        fingerprint=outputs.output_fingerprint(files=[wd.expression_table, wd.labels_table,
                                                      wd.recipe_settings]))


def _redo_embed(wd: Workdir, encoder: str) -> None:
    path = wd.features_dir(encoder) / "manifest.json"
    man = artifacts.read_json(path)
    man["fingerprint"] = "re-embedded"
    artifacts.write_json(path, man)


@pytest.mark.parametrize("change", ["prep-expr", "embed"])
def test_train_and_evaluate_refuse_a_run_made_from_changed_inputs(trained, change: str) -> None:
    from brcatool.training import TrainConfig, run_train

    prepared, cfg = trained
    wd = prepared.workdir
    assert run_train(wd, cfg, progress=False).skipped  # unchanged: reused
    if change == "prep-expr":
        _redo_prep_expr(wd, 2.0)
    else:
        _redo_embed(wd, prepared.encoder)
    for args in (["train", "--name", "r", "--fusion", "concat", "--aggregator", "mean", "--folds", "2",
                  "--epochs", "2", "--patience", "1", "--device", "cpu"], ["evaluate", "--run", "r"]):
        res = CliRunner().invoke(app, [*args, "-w", str(wd.root), "-q"])
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert f"older {change}" in res.output and "train --name r --overwrite" in res.output, res.output
    res = run_train(wd, TrainConfig(**{**cfg.__dict__, "overwrite": True}), progress=False)
    assert not res.skipped
    assert run_train(wd, cfg, progress=False).skipped  # fresh again


def test_features_made_from_an_older_tile_output_are_refused(trained) -> None:
    from brcatool.cohort import load_cohort

    prepared, _ = trained
    wd = prepared.workdir
    fpath = wd.features_dir(prepared.encoder) / "manifest.json"
    for first, second in itertools.pairwise(["t1", "t2", "t3"]):
        Manifest("tile", {}).write(wd.stage_manifest("tile"), fingerprint=first)
        man = artifacts.read_json(fpath)
        man["consumed"] = [outputs.consumed(wd, "tile", wd.stage_manifest("tile"))]
        artifacts.write_json(fpath, man)
        load_cohort(wd, images=True, expression=False)  # fresh
        Manifest("tile", {}).write(wd.stage_manifest("tile"), fingerprint=second)  # re-tiled
        with pytest.raises(ArtifactError, match="older tile output") as err:
            load_cohort(wd, images=True, expression=False)
        assert f"embed --encoder {prepared.encoder} --overwrite" in str(err.value)


def test_slide_replaced_in_place_is_retiled_and_noop_reruns_keep_the_fingerprint(
        tmp_path: Path, small_cohort) -> None:
    from brcatool.tiling import TileConfig, run_tile

    src = sorted(small_cohort.slides_dir.glob("*.tif*"))
    folder = tmp_path / "slides"
    folder.mkdir()
    for i, s in enumerate(src[:2]):
        shutil.copy(s, folder / f"TCGA-AA-000{i}-01Z-00-DX1{s.suffix}")
    wd = Workdir(tmp_path / "wd")
    cfg = TileConfig(slides=[str(folder)], patches=3, patch_size=64, mpp_fallback=0.5)
    run_tile(wd, cfg, progress=False)
    fp1 = artifacts.read_json(wd.stage_manifest("tile"))["fingerprint"]
    again = run_tile(wd, cfg, progress=False)
    assert again.n_skipped == 2 and artifacts.read_json(wd.stage_manifest("tile"))["fingerprint"] == fp1
    victim = sorted(folder.iterdir())[0]
    shutil.copy(src[2], victim)  # another slide's bytes under the same name
    res = run_tile(wd, cfg, progress=False)
    assert res.n_skipped == 1
    fp2 = artifacts.read_json(wd.stage_manifest("tile"))["fingerprint"]
    assert fp2 != fp1
    row = [r for r in res.rows if r["slide_id"] == victim.name.split(".")[0]][0]
    from brcatool import slides

    with slides.open_slide(victim) as s:
        assert (row["width"], row["height"]) == s.dimensions
    assert np.all([r["status"] == "ok" for r in res.rows])


def test_retiling_makes_train_refuse_the_old_features_end_to_end(tmp_path: Path, small_cohort) -> None:
    """tile -> embed -> prep-expr, then `tile --overwrite` with other parameters: the features no
    longer match the patch table, so loading them is refused until embed is re-run."""
    from brcatool.cohort import load_cohort
    from brcatool.embedding import EmbedConfig, run_embed
    from brcatool.expression import PrepExprConfig, run_prep_expr
    from brcatool.tiling import TileConfig, run_tile

    wd = Workdir(tmp_path / "wd")
    tile = TileConfig(slides=[str(small_cohort.slides_dir)], patches=2, patch_size=32, mpp_fallback=0.5)
    run_tile(wd, tile, progress=False)
    embed = EmbedConfig(encoder="resnet18", weights="random", batch_size=8, num_workers=0,
                        precision="fp32", device="cpu")
    run_embed(wd, embed, progress=False)
    run_prep_expr(wd, PrepExprConfig(expression=small_cohort.expression, clinical=small_cohort.clinical),
                  progress=False)
    assert load_cohort(wd, images=True, expression=False).has_img.any()
    run_tile(wd, TileConfig(**{**tile.__dict__, "patches": 3, "overwrite": True}), progress=False)
    with pytest.raises(ArtifactError, match="older tile output") as err:
        load_cohort(wd, images=True, expression=False)
    assert "embed --encoder resnet18 --overwrite" in str(err.value)
    with pytest.raises(ArtifactError, match="other parameters"):  # embed itself sees the change
        run_embed(wd, embed, progress=False)
    run_embed(wd, EmbedConfig(**{**embed.__dict__, "overwrite": True}), progress=False)
    cohort = load_cohort(wd, images=True, expression=False)
    assert int(cohort.mask.sum()) == artifacts.read_json(wd.stage_manifest("tile"))["counts"]["patches"]
