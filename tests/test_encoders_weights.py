"""Weights for foundation encoders: local files, a Hugging Face cache laid out as the hub does,
offline errors, wrong checkpoints; one real forward + feature write with a UNI-shaped ViT-L of
depth 1 (random weights saved to a file)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from brcatool import stores
from brcatool.artifacts import Workdir
from brcatool.cli.app import app
from brcatool.embedding import feature_manifest
from brcatool.encoders import REGISTRY, get_encoder, hub
from brcatool.encoders.checkpoint import read_state_dict
from brcatool.encoders.runtime import cpu_estimate, seconds_per_image
from brcatool.encoders.weights import Weights, build_encoder, resolve_weights
from brcatool.errors import InputError, OfflineError
from brcatool.outputs import file_digest
from brcatool.synth.checkpoints import hf_cache_file
from brcatool.synth.patches import make_patch_workdir

COUNTS = [3, 2]


@pytest.fixture()
def uni_d1(monkeypatch):
    """UNI's recipe (ViT-L/16 width, init_values, dynamic size, 224 px, ImageNet mean/std), depth 1."""
    base = get_encoder("uni")
    spec = dataclasses.replace(base, name="uni-d1", timm_kwargs={**base.timm_kwargs, "depth": 1})
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    return spec


@pytest.fixture()
def hf_env(tmp_path, monkeypatch) -> Path:
    """An empty HF_HOME and HF_HUB_OFFLINE=1 (nothing may be downloaded); returns the hub cache."""
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf" / "hub"


def _random_checkpoint(spec, path: Path, seed: int = 3) -> dict[str, torch.Tensor]:
    sd = build_encoder(spec, Weights(f"random:{seed}", "random"), seed=seed).state_dict()
    torch.save(sd, path)
    return sd


def _embed_args(wd: Workdir, encoder: str, weights: str) -> list[str]:
    return ["embed", "-w", str(wd.root), "--encoder", encoder, "--weights", weights, "--device", "cpu",
            "--precision", "fp32", "--num-workers", "0", "--batch-size", "4"]


def _feats(wd: Workdir, encoder: str) -> dict[str, np.ndarray]:
    return {s: stores.read_features(wd, encoder, s) for s in stores.feature_slides(wd, encoder)}


def test_uni_shaped_embed_from_a_file_and_from_the_hf_cache(tmp_path, uni_d1, hf_env):
    ckpt = tmp_path / "pytorch_model.bin"
    sd = _random_checkpoint(uni_d1, ckpt)
    digest = file_digest(ckpt)
    wd = make_patch_workdir(tmp_path / "wd", slides=2, patches=COUNTS, size=64, seed=2)
    runner = CliRunner()
    res = runner.invoke(app, _embed_args(wd, "uni-d1", str(ckpt)))
    assert res.exit_code == 0, res.output
    assert "s/img" in res.output  # a ViT-L on a CPU: the estimate comes before the run
    feats = _feats(wd, "uni-d1")
    assert sorted(f.shape for f in feats.values()) == [(1, 2, 1024), (1, 3, 1024)]
    man = feature_manifest(wd, "uni-d1")
    assert man["params"]["weights"] == f"pytorch_model.bin sha256:{digest}"
    assert man["weights_detail"]["sha256"] == digest
    assert man["params"]["preprocess"] == {"resize": 224, "crop": None, "interpolation": "bilinear"}
    assert man["params"]["input_size"] == 224 and man["params"]["output"] == "pooled"

    # the same features by hand: timm ViT-L/16 (UNI card args, depth 1) + the file, resize, ImageNet norm
    import timm

    ref = timm.create_model("vit_large_patch16_224", img_size=224, patch_size=16, init_values=1e-5,
                            num_classes=0, dynamic_img_size=True, depth=1).eval()
    ref.load_state_dict(torch.load(ckpt, weights_only=True), strict=True)
    slide = next(s for s, f in feats.items() if f.shape[1] == 3)
    px = torch.from_numpy(np.asarray(stores.read_patches(wd, slide)[:])).permute(0, 3, 1, 2).float() / 255
    px = torch.nn.functional.interpolate(px, size=(224, 224), mode="bilinear", antialias=True)
    mean, std = torch.tensor(uni_d1.mean).view(1, 3, 1, 1), torch.tensor(uni_d1.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        want = ref((px - mean) / std).numpy()
    np.testing.assert_allclose(feats[slide][0].astype(np.float32), want, rtol=2e-2, atol=2e-2)
    assert set(sd) == set(ref.state_dict())

    # hf:MahmoodLab/UNI from a hub-shaped cache, HF_HUB_OFFLINE=1: the same bytes, the same features
    link = hf_cache_file(hf_env, "MahmoodLab/UNI", "pytorch_model.bin", ckpt)
    assert link.is_symlink() and (hf_env / "models--MahmoodLab--UNI" / "refs" / "main").is_file()
    other = make_patch_workdir(tmp_path / "wd2", slides=2, patches=COUNTS, size=64, seed=2)
    res = runner.invoke(app, _embed_args(other, "uni-d1", "hf:MahmoodLab/UNI"))
    assert res.exit_code == 0, res.output
    again = _feats(other, "uni-d1")
    assert all(np.array_equal(feats[s], again[s]) for s in feats)
    man = feature_manifest(other, "uni-d1")
    assert man["params"]["weights"] == f"hf:MahmoodLab/UNI/pytorch_model.bin sha256:{digest}"
    assert man["weights_detail"]["source"] == "hf"


def test_offline_without_a_cached_file_is_one_line_with_what_to_do(tmp_path, hf_env):
    spec = get_encoder("uni")
    with pytest.raises(OfflineError) as err:
        resolve_weights(spec, "hf:MahmoodLab/UNI", seed=0)
    line = err.value.one_line()
    assert "\n" not in line
    for part in ("MahmoodLab/UNI", "pytorch_model.bin", "request", "https://huggingface.co/MahmoodLab/UNI",
                 str(hf_env / "models--MahmoodLab--UNI"), "--weights PATH"):
        assert part in line, part
    wd = make_patch_workdir(tmp_path / "wd", slides=1, patches=[2], size=64, seed=0)
    res = CliRunner().invoke(app, _embed_args(wd, "uni", "hf:MahmoodLab/UNI"))
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "MahmoodLab/UNI" in res.output and "pytorch_model.bin" in res.output.replace("\n", "")


def test_hub_cache_folder_follows_the_environment_when_called(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub.cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "direct"))
    assert hub.cache_dir() == tmp_path / "direct"
    assert hub.parse("hf:bioptimus/H-optimus-0") == ("bioptimus/H-optimus-0", None)
    assert hub.parse("hf:org/name/sub.safetensors") == ("org/name", "sub.safetensors")
    with pytest.raises(InputError, match="hf:ORG/NAME"):
        hub.parse("hf:justaname")


def test_download_tries_the_next_file_name_and_a_dead_network_is_offline(tmp_path, monkeypatch, hf_env):
    import huggingface_hub
    from huggingface_hub import errors

    monkeypatch.delenv("HF_HUB_OFFLINE")
    asked = []

    def fake_download(repo, name, **kw):
        asked.append(name)
        if name == "model.safetensors":
            raise errors.EntryNotFoundError("no such file")
        return str(tmp_path / name)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    path, name = hub.resolve("org/model", ("model.safetensors", "pytorch_model.bin"))
    assert (path.name, name, asked) == ("pytorch_model.bin", "pytorch_model.bin",
                                        ["model.safetensors", "pytorch_model.bin"])

    def no_network(repo, name, **kw):
        raise ConnectionError("unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    with pytest.raises(OfflineError, match="could not be downloaded"):
        hub.resolve("org/model", ("pytorch_model.bin",))

    def unreachable_hub(repo, name, **kw):  # what the hub raises offline: an EntryNotFoundError too
        raise errors.LocalEntryNotFoundError("cannot reach the Hub and the file is not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable_hub)
    with pytest.raises(OfflineError, match="cannot be reached"):
        hub.resolve("org/model", ("model.safetensors", "pytorch_model.bin"))


def test_checkpoint_prefixes_containers_and_safetensors(tmp_path, uni_d1):
    from safetensors.torch import save_file

    sd = _random_checkpoint(uni_d1, tmp_path / "plain.pth", seed=4)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.model.{k}": v for k, v in sd.items()}, "epoch": 3}, wrapped)
    st = tmp_path / "backbone.safetensors"
    save_file({f"backbone.{k}": v.contiguous() for k, v in sd.items()}, str(st))
    for path in (wrapped, st):
        assert sorted(read_state_dict(path)) == sorted(sd)
        net = build_encoder(uni_d1, resolve_weights(uni_d1, str(path), seed=0))
        assert all(torch.equal(net.state_dict()[k], v) for k, v in sd.items())


def test_wrong_architecture_checkpoint_is_one_error_naming_keys(tmp_path, uni_d1):
    import timm

    tiny = tmp_path / "vit_tiny.pth"  # ViT-Ti/16: 192 wide, 12 blocks, no layer scale
    torch.save(timm.create_model("vit_tiny_patch16_224", num_classes=0).state_dict(), tiny)
    with pytest.raises(InputError) as err:
        build_encoder(uni_d1, resolve_weights(uni_d1, str(tiny), seed=0))
    line = err.value.one_line()
    assert "does not match the uni-d1 architecture" in line and "\n" not in line
    assert "missing 2 (e.g. blocks.0.ls1.gamma, blocks.0.ls2.gamma)" in line
    assert "unexpected 132 (e.g. blocks.1." in line  # 11 extra blocks x 12 tensors
    assert "cls_token [1, 1, 192] vs [1, 1, 1024]" in line and "hf:MahmoodLab/UNI" in line
    deeper = dataclasses.replace(uni_d1, timm_kwargs={**uni_d1.timm_kwargs, "depth": 2})
    two = tmp_path / "depth2.pth"
    _random_checkpoint(deeper, two)
    with pytest.raises(InputError, match=r"unexpected 14 \(e\.g\. blocks\.1\."):
        build_encoder(uni_d1, resolve_weights(uni_d1, str(two), seed=0))
    one = tmp_path / "depth1.pth"
    _random_checkpoint(uni_d1, one)
    with pytest.raises(InputError, match=r"missing 14 \(e\.g\. blocks\.1\."):
        build_encoder(deeper, resolve_weights(deeper, str(one), seed=0))


def test_cpu_estimate_is_patches_times_measured_seconds():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    per = seconds_per_image(net, 32)
    assert 0 < per < 1
    line = cpu_estimate(get_encoder("h-optimus-0"), 36_000, 2, 1.5)
    assert "36,000 patches x 2 view(s) x 1.50 s/img" in line and "30 h 0 min" in line


def test_timm_model_from_a_timm_hub_checkpoint_with_its_classifier(tmp_path, hf_env):
    import timm
    from safetensors.torch import save_file

    spec = get_encoder("timm:vit_tiny_patch16_224")
    full = timm.create_model("vit_tiny_patch16_224", pretrained=False)  # 1000-class head, as published
    src = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(src))
    hf_cache_file(hf_env, spec.hf_repo, "model.safetensors", src)
    w = resolve_weights(spec, f"hf:{spec.hf_repo}", seed=0)
    assert w.identity == f"hf:{spec.hf_repo}/model.safetensors sha256:{file_digest(src)}"
    net = build_encoder(spec, w)  # the head is not built; its keys are ignored
    assert "head.weight" not in net.state_dict()
    assert all(torch.equal(v, full.state_dict()[k]) for k, v in net.state_dict().items())
    with torch.inference_mode():
        assert net(torch.rand(1, 3, 224, 224)).shape == (1, 192)
