"""Every registered fusion x aggregator trains a step; masks, attention and fusion behave."""

from __future__ import annotations

import pytest
import torch

from brcatool.errors import InputError
from brcatool.models import AGGREGATORS, FUSIONS, ModelConfig, Registry, build_model

B, N, D, G = 4, 6, 10, 12


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    expr = torch.randn(B, G, generator=g)
    feats = torch.randn(B, N, D, generator=g)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, 3:] = False  # a patient with fewer patches
    mask[2, 1:] = False  # ... and one with a single patch
    return expr, feats, mask


def _combos():
    for f in FUSIONS:
        for a in AGGREGATORS:
            for d in (("gene2img", "img2gene", "both") if f == "xattn" else ("gene2img",)):
                for n_out in (1, 3):
                    yield f, a, d, n_out


@pytest.mark.parametrize(("fusion", "aggregator", "xdir", "n_out"), list(_combos()))
def test_every_model_trains_a_step(fusion: str, aggregator: str, xdir: str, n_out: int) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(fusion=fusion, aggregator=aggregator, n_genes=G, feat_dim=D,
                                    n_out=n_out, hidden=8, heads=2, gene_tokens=3, xattn_dir=xdir,
                                    dropout=0.1))
    expr, feats, mask = _inputs()
    out = model(expr, feats, mask)
    assert out["logits"].shape == (B, n_out)
    assert torch.isfinite(out["logits"]).all()
    target = torch.zeros(B, dtype=torch.long)
    loss = (torch.nn.functional.cross_entropy(out["logits"], target) if n_out > 1
            else torch.nn.functional.binary_cross_entropy_with_logits(out["logits"][:, 0], target.float()))
    loss.backward()
    for branch, used in (("gene", model.uses_gene), ("image", model.uses_image)):
        if not used:
            assert not [n for n, _ in model.named_parameters() if n.startswith(branch + ".")]
    # every parameter group gets a gradient: an idle part (e.g. an aggregator the fusion ignores)
    # would train nothing while the run's name says it is there
    idle = [n for n, p in model.named_parameters() if p.grad is None or float(p.grad.abs().sum()) == 0]
    assert not idle, f"no gradient reaches {idle}"
    torch.optim.AdamW(model.parameters(), lr=1e-2).step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("fusion", [f for f in FUSIONS if FUSIONS.get(f).uses_image])
@pytest.mark.parametrize("aggregator", list(AGGREGATORS))
def test_attention_sums_to_one_and_ignores_padding(fusion: str, aggregator: str) -> None:
    torch.manual_seed(1)
    model = build_model(ModelConfig(fusion=fusion, aggregator=aggregator, n_genes=G, feat_dim=D,
                                    hidden=8, heads=2)).eval()
    expr, feats, mask = _inputs()
    out = model(expr, feats, mask)
    att = out["attention"]
    assert att.shape == (B, N)
    assert torch.allclose(att.sum(1), torch.ones(B), atol=1e-5)
    assert (att[~mask] == 0).all()
    junk = feats.clone()
    junk[~mask] = 1e3  # padding must not matter
    assert torch.allclose(model(expr, junk, mask)["logits"], out["logits"], atol=1e-5)


def test_concat_uses_the_image_features() -> None:
    torch.manual_seed(2)
    model = build_model(ModelConfig(fusion="concat", n_genes=G, feat_dim=D, hidden=8)).eval()
    expr, feats, mask = _inputs()
    a = model(expr, feats, mask)["logits"]
    b = model(expr, feats + torch.randn_like(feats), mask)["logits"]
    c = model(expr + 1.0, feats, mask)["logits"]
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("fusion", ["concat", "late", "xattn"])
def test_missing_tokens_stand_in_for_absent_modalities(fusion: str) -> None:
    torch.manual_seed(3)
    model = build_model(ModelConfig(fusion=fusion, n_genes=G, feat_dim=D, hidden=8, heads=2,
                                    missing_tokens=True)).eval()
    expr, feats, mask = _inputs()
    has_expr = torch.tensor([True, False, True, True])
    has_img = torch.tensor([True, True, False, True])
    mask_absent = mask.clone()
    mask_absent[2] = False
    out = model(expr, feats, mask_absent, has_expr, has_img)
    assert torch.isfinite(out["logits"]).all()
    assert float(out["attention"][2].detach().abs().sum()) == 0.0  # no patches, no weights
    # what the absent modality holds cannot matter
    out2 = model(expr + torch.tensor([0, 5.0, 0, 0])[:, None], feats, mask_absent, has_expr, has_img)
    assert torch.allclose(out["logits"][1], out2["logits"][1], atol=1e-5)


def test_registries_reject_unknown_names_listing_choices() -> None:
    with pytest.raises(InputError, match="abmil"):
        AGGREGATORS.get("transmil")
    with pytest.raises(InputError, match="xattn"):
        build_model(ModelConfig(fusion="nope"))
    with pytest.raises(InputError, match="divisible"):
        build_model(ModelConfig(fusion="xattn", n_genes=G, feat_dim=D, hidden=10, heads=4))
    reg: Registry[int] = Registry("thing")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError):
        reg.register("a")(lambda: 2)
    assert reg.create("a") == 1 and reg.names() == ["a"]
