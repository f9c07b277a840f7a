"""Class 2 of issue 18: --overwrite validates first, builds beside the old output and swaps at the
end; on any failure the old output is intact (byte for byte) and no staging is left behind."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from brcatool import outputs, stores
from brcatool.artifacts import Workdir
from brcatool.errors import BrcaError, InputError
from brcatool.synth.patches import make_patch_workdir


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes (folders: None), lock files aside."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*")) if ".locks" not in p.relative_to(root).parts}


def _layout(rng: random.Random, finals: list[Path]) -> None:
    for f in finals:
        if rng.random() < 0.3:
            continue
        if rng.random() < 0.5:
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(rng.randbytes(rng.randint(0, 50)))
        else:
            for i in range(rng.randint(0, 3)):
                (f / f"sub{i}").mkdir(parents=True, exist_ok=True)
                (f / f"sub{i}" / "x.bin").write_bytes(rng.randbytes(8))
            f.mkdir(parents=True, exist_ok=True)


@pytest.mark.parametrize("seed", range(40))
def test_replacing_swaps_on_success_and_keeps_the_old_on_failure(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    wd = Workdir(tmp_path / "wd")
    wd.root.mkdir()
    (wd.root / "untouched.txt").write_text("other stage")
    finals = [wd.patches_zarr, wd.qc_dir, wd.patches_table, wd.root / "sub" / "deep.json",
              wd.stage_manifest("tile")]
    _layout(rng, finals)
    key = outputs.replace_key(finals)
    killed = wd.root / f".t-{key}.tmp-0badf00d"  # the staging a killed replacement left behind
    (killed / "qc").mkdir(parents=True)
    other = wd.root / ".t-0123456789ab.tmp-0badf00d"  # another replacement's, maybe live: kept
    other.mkdir()
    before = {k: v for k, v in _snapshot(wd.root).items() if not k.startswith(f".t-{key}")}
    fail = rng.random() < 0.5
    with pytest.raises(RuntimeError) if fail else _nothing():
        with outputs.replacing(wd, finals, tag="t") as staged:
            assert staged.patches_zarr != wd.patches_zarr and staged.labels_table == wd.labels_table
            assert all(staged.at(f) != f for f in finals)
            _layout(rng, [staged.at(f) for f in finals])
            staged_view = {str(f.relative_to(wd.root)): _snapshot(staged.at(f)) if staged.at(f).is_dir() else
                           (staged.at(f).read_bytes() if staged.at(f).exists() else "absent")
                           for f in finals}
            if fail:
                raise RuntimeError("the new output could not be made")
    leftovers = [p for p in wd.root.rglob("*") if ".tmp-" in p.name and not p.is_relative_to(other)]
    assert leftovers == [] and other.is_dir()
    if fail:
        assert _snapshot(wd.root) == before
        return
    assert (wd.root / "untouched.txt").read_text() == "other stage"
    for f in finals:  # each final is exactly what the new run made (absent if it made none)
        want = staged_view[str(f.relative_to(wd.root))]
        got = _snapshot(f) if f.is_dir() else (f.read_bytes() if f.exists() else "absent")
        assert got == want, f


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _embed_cfg(**kw):
    from brcatool.embedding import EmbedConfig

    base = dict(encoder="resnet18", weights="random", batch_size=4, num_workers=0, precision="fp32",
                device="cpu")
    return EmbedConfig(**{**base, **kw})


def test_embed_overwrite_with_wrong_weights_keeps_the_features(tmp_path: Path) -> None:
    from brcatool.embedding import run_embed
    from brcatool.encoders import build_encoder, get_encoder, resolve_weights

    wd = make_patch_workdir(tmp_path / "wd", slides=2, patches=[3, 2], size=32, seed=3)
    run_embed(wd, _embed_cfg(), progress=False)
    fdir = wd.features_dir("resnet18")
    before = _snapshot(fdir)
    other = build_encoder(get_encoder("resnet34"), resolve_weights(get_encoder("resnet34"), "random", seed=0))
    bad = tmp_path / "resnet34.pt"
    torch.save(other.state_dict(), bad)
    (tmp_path / "garbage.pt").write_bytes(b"not a state dict")
    for weights in (str(bad), str(tmp_path / "garbage.pt"), str(tmp_path / "missing.pt")):
        with pytest.raises(BrcaError):
            run_embed(wd, _embed_cfg(weights=weights, overwrite=True), progress=False)
        assert _snapshot(fdir) == before, weights
        assert [p for p in fdir.parent.iterdir() if p.name.startswith(".")] == []
    res = run_embed(wd, _embed_cfg(seed=1, overwrite=True), progress=False)  # a good one replaces
    assert res.slides_embedded == 2 and _snapshot(fdir) != before


def test_tile_overwrite_that_fails_late_keeps_the_old_outputs(tmp_path: Path, small_cohort,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from brcatool import tiling
    from brcatool.tiling import TileConfig, run_tile

    slides = sorted(small_cohort.slides_dir.glob("*.tif*"))[:2]
    wd = Workdir(tmp_path / "wd")
    cfg = TileConfig(slides=[str(s) for s in slides], patches=2, patch_size=64, mpp_fallback=0.5)
    old = run_tile(wd, cfg, progress=False)
    before = _snapshot(wd.root)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tiling, "_merge", boom)
    with pytest.raises(OSError):
        run_tile(wd, TileConfig(**{**cfg.__dict__, "patches": 3, "overwrite": True}), progress=False)
    after = {k: v for k, v in _snapshot(wd.root).items() if not k.startswith(".locks")}
    assert after == {k: v for k, v in before.items() if not k.startswith(".locks")}
    with pytest.raises(InputError):  # refused before anything is touched
        run_tile(wd, TileConfig(**{**cfg.__dict__, "patches": 0, "overwrite": True}), progress=False)
    monkeypatch.undo()
    res = run_tile(wd, TileConfig(**{**cfg.__dict__, "patches": 3, "overwrite": True}), progress=False)
    assert res.n_patches == old.n_patches + old.n_patients  # one more patch per patient
    assert not any(".tmp-" in p.name for p in wd.root.rglob("*"))


def test_train_overwrite_that_fails_keeps_the_old_run(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from brcatool.synth import make_prepared_workdir
    from brcatool.training import TrainConfig, run_train
    from brcatool.training import stage as train_stage

    prepared = make_prepared_workdir(tmp_path / "wd", patients=16, patches=2, dim=4, genes=12)
    cfg = TrainConfig(fusion="gene", folds=2, epochs=2, patience=1, name="keep", device="cpu")
    run_train(prepared.workdir, cfg, progress=False)
    run_dir = prepared.workdir.run_dir("keep")
    before = _snapshot(run_dir)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train_stage, "train_fold", boom)
    with pytest.raises(OSError):
        run_train(prepared.workdir, TrainConfig(**{**cfg.__dict__, "epochs": 3, "overwrite": True}),
                  progress=False)
    assert _snapshot(run_dir) == before
    with pytest.raises(InputError):
        run_train(prepared.workdir, TrainConfig(**{**cfg.__dict__, "lr": -1.0, "overwrite": True}),
                  progress=False)
    assert _snapshot(run_dir) == before
    assert np.all([not p.name.startswith(".") for p in prepared.workdir.runs_dir.iterdir()])
    assert stores.feature_slides(prepared.workdir, prepared.encoder)  # nothing else touched


def test_evaluate_overwrite_that_fails_keeps_the_old_evaluation(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from brcatool import evaluation
    from brcatool.evaluation import EvaluateConfig, run_evaluate
    from brcatool.synth import make_prepared_workdir
    from brcatool.training import TrainConfig, run_train

    prepared = make_prepared_workdir(tmp_path / "wd", patients=12, patches=2, dim=4, genes=8)
    run_train(prepared.workdir, TrainConfig(fusion="gene", folds=2, epochs=1, patience=1, name="e",
                                            device="cpu"), progress=False)
    cfg = EvaluateConfig(run="e", bootstrap=10)
    first = run_evaluate(prepared.workdir, cfg, progress=False)
    before = _snapshot(first.out_dir)
    real = evaluation._curves

    def boom(*a, **k):
        real(*a, **k)  # some new figures are drawn ... then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(evaluation, "_curves", boom)
    with pytest.raises(OSError):
        run_evaluate(prepared.workdir, EvaluateConfig(run="e", bootstrap=20, overwrite=True), progress=False)
    assert _snapshot(first.out_dir) == before
    assert not [p for p in first.out_dir.parent.iterdir() if ".tmp-" in p.name]
    monkeypatch.undo()
    again = EvaluateConfig(run="e", bootstrap=20, overwrite=True)
    res = run_evaluate(prepared.workdir, again, progress=False)
    assert res.out_dir == first.out_dir
    assert all(p.is_file() and p.parent.parent == res.out_dir for p in res.plots)
    assert _snapshot(res.out_dir) != before


def test_prep_expr_overwrite_that_fails_mid_write_keeps_the_old_tables(
        tmp_path: Path, small_cohort, monkeypatch: pytest.MonkeyPatch) -> None:
    from brcatool.expression import PrepExprConfig, run_prep_expr
    from brcatool.expression import stage as expr_stage

    wd = Workdir(tmp_path / "wd")
    cfg = PrepExprConfig(expression=small_cohort.expression, clinical=small_cohort.clinical)
    run_prep_expr(wd, cfg, progress=False)
    before = _snapshot(wd.root)
    real = expr_stage.write_parquet

    def full_disk(df, path, **kw):
        if "cohort" in str(path):
            raise OSError(28, "No space left on device")
        return real(df, path, **kw)

    monkeypatch.setattr(expr_stage, "write_parquet", full_disk)
    other = PrepExprConfig(**{**cfg.__dict__, "top_genes": 50})
    with pytest.raises(OSError):
        run_prep_expr(wd, other, progress=False, overwrite=True)
    assert _snapshot(wd.root) == before
    monkeypatch.undo()
    run_prep_expr(wd, other, progress=False, overwrite=True)
    assert _snapshot(wd.root) != before and not any(".tmp-" in p.name for p in wd.root.rglob("*"))


def test_a_second_replacement_of_the_same_outputs_refuses(tmp_path: Path) -> None:
    from brcatool.locks import LockBusy

    wd = Workdir(tmp_path / "wd")
    wd.root.mkdir()
    with outputs.replacing(wd, [wd.qc_dir], tag="t") as first:
        first.qc_dir.mkdir(parents=True)
        with pytest.raises(LockBusy, match="locked by pid"):
            with outputs.replacing(wd, [wd.qc_dir], tag="t"):
                pass
        with outputs.replacing(wd, [wd.patches_table], tag="t"):  # other outputs: fine
            pass
    assert wd.qc_dir.is_dir()
