"""Foundation encoders: every registered one built on the meta device against its model card.

No giant model is built for real: the architecture is made on ``torch.device("meta")`` and its
state_dict layout compared with a checkpoint layout written from the card's numbers
(``brcatool.synth.checkpoints.vit_layout``), so a wrong timm argument fails here.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from brcatool.encoders import REGISTRY, get_encoder
from brcatool.encoders.checkpoint import layout, layout_problems
from brcatool.encoders.preprocess import Preprocess, fit_input, plan_input
from brcatool.encoders.weights import meta_encoder, resolve_weights
from brcatool.errors import InputError
from brcatool.synth.checkpoints import vit_layout

# Numbers from each model card / timm config.json (sources in brcatool/encoders/foundation.py):
# width, depth, heads, patch px, register tokens, pos-embed without prefix tokens, MLP width,
# SwiGLU, feature size.
CARDS = {
    "uni": dict(dim=1024, depth=24, heads=16, patch=16, reg_tokens=0, no_embed_class=False,
                mlp_hidden=4096, swiglu=False, out=1024),
    "uni2-h": dict(dim=1536, depth=24, heads=24, patch=14, reg_tokens=8, no_embed_class=True,
                   mlp_hidden=4096, swiglu=True, out=1536),
    "virchow2": dict(dim=1280, depth=32, heads=16, patch=14, reg_tokens=4, no_embed_class=False,
                     mlp_hidden=3416, swiglu=True, out=2560),
    "h-optimus-0": dict(dim=1536, depth=40, heads=24, patch=14, reg_tokens=4, no_embed_class=True,
                        mlp_hidden=4096, swiglu=True, out=1536),
    "prov-gigapath": dict(dim=1536, depth=40, heads=24, patch=16, reg_tokens=0, no_embed_class=False,
                          mlp_hidden=4096, swiglu=True, out=1536),
}
FOUNDATION = sorted(n for n, s in REGISTRY.items() if s.family == "timm")


def _inner(net: torch.nn.Module) -> torch.nn.Module:
    return getattr(net, "model", net)  # Virchow2's cls+mean wrapper holds the ViT as .model


def test_every_foundation_model_has_card_facts_here():
    assert FOUNDATION == sorted(CARDS)


@pytest.mark.parametrize("name", FOUNDATION)
def test_architecture_matches_the_card_layout_and_output_size(name):
    card, spec = CARDS[name], get_encoder(name)
    net = meta_encoder(spec)
    vit = _inner(net)
    expected = vit_layout(**{k: v for k, v in card.items() if k not in ("heads", "out")})
    problems = layout_problems(expected, layout(vit.state_dict()))
    assert not any(problems.values()), problems
    assert vit.blocks[0].attn.num_heads == card["heads"]
    out = net(torch.empty(2, 3, 224, 224, device="meta"))
    assert tuple(out.shape) == (2, card["out"]) == (2, spec.dim)
    assert spec.fixed_input == 224 and spec.hf_repo and spec.card.startswith("https://huggingface.co/")


def test_a_wrong_timm_argument_breaks_the_layout():
    spec = get_encoder("uni2-h")
    wrong = dataclasses.replace(spec, timm_kwargs={**spec.timm_kwargs, "reg_tokens": 4})
    expected = layout(_inner(meta_encoder(spec)).state_dict())
    problems = layout_problems(expected, layout(_inner(meta_encoder(wrong)).state_dict()))
    assert problems["shape"] == ["reg_token [1, 4, 1536] vs [1, 8, 1536]"]
    no_swiglu = {k: v for k, v in spec.timm_kwargs.items() if k not in ("mlp_layer", "act_layer")}
    problems = layout_problems(expected, layout(_inner(meta_encoder(
        dataclasses.replace(spec, timm_kwargs=no_swiglu))).state_dict()))
    assert any("mlp.fc2.weight" in p for p in problems["shape"])


def test_virchow2_feature_is_class_token_and_mean_of_patch_tokens_without_registers():
    spec = get_encoder("virchow2")
    small = dataclasses.replace(spec, timm_kwargs={**spec.timm_kwargs, "depth": 1, "embed_dim": 32,
                                                   "num_heads": 2})
    torch.manual_seed(0)
    from brcatool.encoders.weights import build_encoder

    net = build_encoder(small, resolve_weights(small, "random", seed=0))
    x = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        tokens = net.model(x)  # global_pool="": every token
        out = net(x)
    assert tokens.shape == (2, 1 + 4 + 256, 32) and net.skip == 5
    assert torch.allclose(out, torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1))


@pytest.mark.parametrize(("name", "resize", "crop", "interp"), [
    ("uni", 224, None, "bilinear"), ("uni2-h", 224, None, "bilinear"),
    ("virchow2", 224, 224, "bicubic"), ("h-optimus-0", None, 224, "bilinear"),
    ("prov-gigapath", 256, 224, "bicubic")])
def test_input_recipe_per_card_on_256_px_patches(name, resize, crop, interp):
    spec = get_encoder(name)
    plan = plan_input(spec, 256, None)
    assert (plan.resize, plan.crop, plan.interpolation, plan.size) == (resize, crop, interp, 224)
    x = torch.rand(2, 3, 256, 256)
    y = fit_input(x, plan)
    assert y.shape == (2, 3, 224, 224) and 0 <= y.min() and y.max() <= 1
    if resize is None:  # H-optimus-0: centre crop, pixels untouched (0.5 um/px kept)
        assert torch.equal(y, x[..., 16:240, 16:240])
    small = plan_input(spec, 64, None)  # patches smaller than the input grow to it first
    assert fit_input(torch.rand(1, 3, 64, 64), small).shape[-1] == 224
    with pytest.raises(InputError, match="224 px"):
        plan_input(spec, 256, 448)


def test_preprocess_normalises_with_the_models_own_constants():
    spec = get_encoder("h-optimus-0")
    pre = Preprocess(spec, plan_input(spec, 224, None), "cpu")
    x = torch.full((1, 3, 224, 224), 0.5)
    out = pre(x)
    want = [(0.5 - m) / s for m, s in zip(spec.mean, spec.std, strict=True)]
    assert torch.allclose(out[0, :, 0, 0], torch.tensor(want))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_timm_prefix_builds_any_timm_model_from_its_pretrained_config():
    spec = get_encoder("timm:vit_tiny_patch16_224")
    assert (spec.family, spec.dim, spec.fixed_input) == ("timm", 192, 224)
    assert (spec.resize, spec.crop, spec.interpolation) == (248, 224, "bicubic")  # crop_pct 0.9
    assert spec.mean == (0.5, 0.5, 0.5) and spec.hf_repo.startswith("timm/vit_tiny_patch16_224")
    assert not spec.big and spec.name == "timm:vit_tiny_patch16_224"
    with pytest.raises(InputError, match="timm has no model"):
        get_encoder("timm:vit_nonexistent_patch99")
    with pytest.raises(InputError, match=r"--weights hf:timm/vit_tiny"):
        resolve_weights(spec, "imagenet", seed=0)  # torchvision's ImageNet cache is not timm's


def test_foundation_models_ask_for_their_hub_weights_not_imagenet():
    for name in FOUNDATION:
        spec = get_encoder(name)
        with pytest.raises(InputError) as err:
            resolve_weights(spec, "imagenet", seed=0)
        assert f"--weights hf:{spec.hf_repo}" in err.value.one_line()


def test_virchow2_shaped_embed_writes_its_recipe_into_the_manifest(tmp_path, monkeypatch):
    from brcatool import stores
    from brcatool.embedding import EmbedConfig, feature_manifest, run_embed
    from brcatool.synth.patches import make_patch_workdir

    base = get_encoder("virchow2")
    spec = dataclasses.replace(base, name="virchow2-small", dim=64, big=False, timm_kwargs={
        **base.timm_kwargs, "depth": 1, "embed_dim": 32, "num_heads": 2})
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    wd = make_patch_workdir(tmp_path / "wd", slides=2, patches=[3, 2], size=256, seed=1)
    res = run_embed(wd, EmbedConfig(encoder=spec.name, weights="random", device="cpu", precision="fp32",
                                    batch_size=4, num_workers=0), progress=False)
    assert res.dim == 64 and res.patches == 5
    feats = [stores.read_features(wd, spec.name, s) for s in stores.feature_slides(wd, spec.name)]
    assert sorted(f.shape for f in feats) == [(1, 2, 64), (1, 3, 64)]
    params = feature_manifest(wd, spec.name)["params"]
    assert params["preprocess"] == {"resize": 224, "crop": 224, "interpolation": "bicubic"}
    assert params["output"] == "cls+mean-patch" and params["input_size"] == 224
