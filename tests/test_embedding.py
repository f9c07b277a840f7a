"""The embed stage: encoders registry, weights loading (offline), views, the feature store, the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from brcatool import artifacts, stores
from brcatool.artifacts import Workdir
from brcatool.cli.app import app
from brcatool.embedding import EmbedConfig, feature_identity, feature_manifest, run_embed
from brcatool.encoders import REGISTRY, build_encoder, get_encoder, resolve_weights
from brcatool.encoders.weights import imagenet_cache_file
from brcatool.errors import ArtifactError, InputError, OfflineError
from brcatool.synth.patches import make_patch_workdir

COUNTS = [4, 5, 3]  # batch size 5 makes batches straddle slide ends


@pytest.fixture()
def patch_wd(tmp_path: Path) -> Workdir:
    return make_patch_workdir(tmp_path / "wd", slides=3, patches=COUNTS, size=64, seed=1)


def _cfg(**kw) -> EmbedConfig:
    base = dict(encoder="resnet18", weights="random", batch_size=5, num_workers=0, precision="fp32",
                device="cpu")
    return EmbedConfig(**{**base, **kw})


def _features(wd: Workdir, encoder: str = "resnet18") -> dict[str, np.ndarray]:
    return {s: stores.read_features(wd, encoder, s) for s in stores.feature_slides(wd, encoder)}


@pytest.mark.parametrize("name", sorted(n for n, s in REGISTRY.items() if s.family == "torchvision"))
def test_every_registered_encoder_gives_finite_features_of_its_dim(name):
    """torchvision encoders, for real; foundation ones on the meta device (test_encoders_foundation)."""
    spec = get_encoder(name)
    net = build_encoder(spec, resolve_weights(spec, "random", seed=0), seed=0)
    size = spec.fixed_input or 64
    with torch.inference_mode():
        out = net(torch.rand(2, 3, size, size))
    assert out.shape == (2, spec.dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.std() > 0


def test_unknown_encoder_lists_choices_and_torchvision_names_work():
    with pytest.raises(InputError) as err:
        get_encoder("resnet5O")
    assert "resnet50-trunc" in err.value.one_line()
    assert get_encoder("regnet_x_400mf").dim == 400  # any torchvision classifier by name


def test_random_weights_are_seeded():
    spec = get_encoder("resnet18")
    a, b, c = (build_encoder(spec, resolve_weights(spec, "random", seed=s), seed=s) for s in (3, 3, 4))
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_imagenet_weights_load_offline_from_the_torch_home_cache(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise ConnectionError("network unavailable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    spec = get_encoder("resnet50-trunc")
    _, _, cached = imagenet_cache_file(spec)
    assert cached.parent == tmp_path / "torch" / "hub" / "checkpoints"

    with pytest.raises(OfflineError) as err:  # empty cache, no network: one clear line
        resolve_weights(spec, "imagenet", seed=0)
    line = err.value.one_line()
    assert "\n" not in line and str(cached) in line and "--weights PATH" in line

    torch.manual_seed(5)
    full = __import__("torchvision").models.resnet50()
    cached.parent.mkdir(parents=True, exist_ok=True)
    torch.save(full.state_dict(), cached)
    w = resolve_weights(spec, "imagenet", seed=0)
    assert w.identity.startswith("ResNet50_Weights.IMAGENET1K_V1 sha256:") and w.file == cached
    net = build_encoder(spec, w)
    assert torch.equal(net[0].weight, full.conv1.weight)  # the cached file was loaded
    assert torch.equal(net[6][0].conv1.weight, full.layer3[0].conv1.weight)


def test_weights_path_checks_the_architecture(tmp_path):
    spec = get_encoder("resnet18")
    good = tmp_path / "r18.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in
                               __import__("torchvision").models.resnet18().state_dict().items()}}, good)
    assert resolve_weights(spec, str(good), seed=0).identity.startswith("r18.pt sha256:")
    build_encoder(spec, resolve_weights(spec, str(good), seed=0))  # wrapped + DataParallel prefix ok
    bad = tmp_path / "r34.pt"
    torch.save(__import__("torchvision").models.resnet34().state_dict(), bad)
    with pytest.raises(InputError, match="does not match"):
        build_encoder(spec, resolve_weights(spec, str(bad), seed=0))
    with pytest.raises(InputError, match="not found"):
        resolve_weights(spec, str(tmp_path / "missing.pt"), seed=0)


def test_embed_store_views_determinism_and_index(patch_wd, tmp_path):
    res = run_embed(patch_wd, _cfg(views=3), progress=False)
    feats = _features(patch_wd)
    assert res.slides_embedded == 3 and res.patches == sum(COUNTS) and res.dim == 512
    assert sorted(len(f[0]) for f in feats.values()) == sorted(COUNTS)
    for f in feats.values():
        assert f.dtype == np.float16 and f.shape[0] == 3 and f.shape[2] == 512
        assert np.isfinite(f).all()
        for v in (1, 2):  # augmented views differ from the clean one, patch by patch
            assert (np.abs(f[v].astype(float) - f[0]).max(axis=1) > 1e-3).all()

    # same seed, worker processes instead of the main process: identical features
    other = make_patch_workdir(tmp_path / "other", slides=3, patches=COUNTS, size=64, seed=1)
    run_embed(other, _cfg(views=3, num_workers=1), progress=False)
    again = _features(other)
    assert all(np.array_equal(feats[s], again[s]) for s in feats)

    # view 0 is exactly the clean pass
    clean = make_patch_workdir(tmp_path / "clean", slides=3, patches=COUNTS, size=64, seed=1)
    run_embed(clean, _cfg(views=1), progress=False)
    assert all(np.array_equal(feats[s][:1], stores.read_features(clean, "resnet18", s)) for s in feats)

    index = artifacts.read_parquet(patch_wd.features_index("resnet18"), schema="features")
    assert index.columns == ["slide_id", "patient_id", "n_patches", "views", "dim"]
    assert dict(zip(index["slide_id"], index["n_patches"], strict=True)) == {
        s: f.shape[1] for s, f in feats.items()}
    man = feature_manifest(patch_wd, "resnet18")
    assert man["params"]["weights"] == "random:0" and man["params"]["views"] == 3
    assert man["params"]["input_size"] == 64 and man["params"]["precision"] == "fp32"
    # same encoder and weights, other views: the features are interchangeable for training
    assert feature_identity(man) == feature_identity(feature_manifest(clean, "resnet18"))
    assert (patch_wd.features_dir("resnet18") / "config.yaml").is_file()


def test_bf16_on_cpu_gives_finite_float16_features(patch_wd, tmp_path):
    res = run_embed(patch_wd, _cfg(precision="bf16", input_size=32), progress=False)
    assert res.precision == "bf16" and feature_manifest(patch_wd, "resnet18")["params"]["precision"] == "bf16"
    feats = _features(patch_wd)
    assert sorted(f.shape[1] for f in feats.values()) == sorted(COUNTS)
    for f in feats.values():
        assert f.dtype == np.float16 and f.shape == (1, f.shape[1], 512) and np.isfinite(f).all()
    # the same patches in fp32: close (bf16 keeps ~3 digits), but not bit-equal, so autocast was on
    ref_wd = make_patch_workdir(tmp_path / "fp32", slides=3, patches=COUNTS, size=64, seed=1)
    run_embed(ref_wd, _cfg(precision="fp32", input_size=32), progress=False)
    ref = _features(ref_wd)
    assert any(not np.array_equal(feats[s], ref[s]) for s in ref)
    for s in ref:
        a, b = feats[s].astype(np.float64).ravel(), ref[s].astype(np.float64).ravel()
        assert np.corrcoef(a, b)[0, 1] > 0.99


def test_resume_skips_done_slides_and_mismatch_refuses(patch_wd):
    run_embed(patch_wd, _cfg(), progress=False)
    before = _features(patch_wd)
    res = run_embed(patch_wd, _cfg(), progress=False)
    assert (res.slides_embedded, res.slides_skipped, res.patches) == (0, 3, 0)

    victim = sorted(before)[1]
    shutil.rmtree(patch_wd.features_zarr("resnet18") / victim)  # as if killed before this slide
    res = run_embed(patch_wd, _cfg(), progress=False)
    assert (res.slides_embedded, res.slides_skipped, res.patches) == (1, 2, before[victim].shape[1])
    assert np.array_equal(stores.read_features(patch_wd, "resnet18", victim), before[victim])

    with pytest.raises(ArtifactError, match="views"):
        run_embed(patch_wd, _cfg(views=2), progress=False)
    with pytest.raises(ArtifactError, match="weights"):
        run_embed(patch_wd, _cfg(seed=1), progress=False)
    artifacts.write_json(patch_wd.stage_manifest("tile"), {"params": {"patches": 35}})
    with pytest.raises(ArtifactError, match="tile"):  # re-tiled: the stored features are stale
        run_embed(patch_wd, _cfg(), progress=False)
    res = run_embed(patch_wd, _cfg(views=2, overwrite=True), progress=False)
    assert res.slides_embedded == 3 and feature_manifest(patch_wd, "resnet18")["params"]["views"] == 2


def test_stain_norm_and_resize_are_recorded(patch_wd):
    res = run_embed(patch_wd, _cfg(encoder="resnet50-trunc", stain_norm="macenko", input_size=96,
                                   batch_size=12), progress=False)
    params = feature_manifest(patch_wd, "resnet50-trunc")["params"]
    assert params["stain_norm"]["method"] == "macenko" and len(params["stain_norm"]["he"]) == 3
    assert params["input_size"] == 96 and res.dim == 1024
    normed = _features(patch_wd, "resnet50-trunc")
    assert all(f.shape[2] == 1024 for f in normed.values())
    # both settings act on the pixels, not just the manifest
    run_embed(patch_wd, _cfg(encoder="resnet50-trunc", input_size=96, batch_size=12, overwrite=True),
              progress=False)
    plain = _features(patch_wd, "resnet50-trunc")
    run_embed(patch_wd, _cfg(encoder="resnet50-trunc", stain_norm="macenko", batch_size=12,
                             overwrite=True), progress=False)
    native = _features(patch_wd, "resnet50-trunc")
    assert feature_manifest(patch_wd, "resnet50-trunc")["params"]["input_size"] == 64
    for s, f in normed.items():
        assert plain[s].shape == native[s].shape == f.shape
        assert not np.allclose(f, plain[s], atol=1e-3), f"stain norm changed nothing on {s}"
        assert not np.allclose(f, native[s], atol=1e-3), f"input size changed nothing on {s}"


def test_feature_manifest_refuses_unfinished_or_missing(patch_wd):
    with pytest.raises(ArtifactError, match="no features"):
        feature_manifest(patch_wd, "resnet50")
    run_embed(patch_wd, _cfg(), progress=False)
    patch_wd.features_index("resnet18").unlink()
    with pytest.raises(ArtifactError, match="did not finish"):
        feature_manifest(patch_wd, "resnet18")


def test_cli_embed_random_weights_warns_and_reports(patch_wd):
    runner = CliRunner()
    args = ["embed", "-w", str(patch_wd.root), "--encoder", "resnet18", "--weights", "random",
            "--num-workers", "0", "--batch-size", "6", "--precision", "fp32", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "RANDOM weights" in result.output and "patches/s" in result.output
    assert len(stores.feature_slides(patch_wd, "resnet18")) == 3

    result = runner.invoke(app, args + ["--views", "2"])
    assert result.exit_code == 1 and "--overwrite" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["embed", "-w", str(patch_wd.root), "--encoder", "nope"])
    assert result.exit_code == 1 and "resnet50-trunc" in result.output


def test_cli_embed_without_tile_says_what_to_run(tmp_path):
    result = CliRunner().invoke(app, ["embed", "-w", str(tmp_path), "--weights", "random"])
    assert result.exit_code == 1 and "brcatool tile" in result.output
