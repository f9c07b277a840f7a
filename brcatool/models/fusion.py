"""Gene branch, image branch and the fusion models that combine them.

Every model takes ``(expr (B, G), feats (B, N, D), mask (B, N), has_expr (B,), has_img (B,))`` and
returns a dict with ``logits`` (B, n_out) and, where patches are weighed, ``attention`` (B, N):
per-patch weights that sum to 1 over the valid patches of each patient (zeros for padding and
for patients without slides).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from brcatool.errors import InputError
from brcatool.models.aggregators import AGGREGATORS
from brcatool.models.registry import Registry

FUSIONS: Registry[type[FusionModel]] = Registry("fusion")
XATTN_DIRS = ("gene2img", "img2gene", "both")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model from a checkpoint."""

    fusion: str = "xattn"
    aggregator: str = "abmil"
    n_genes: int = 0
    feat_dim: int = 0
    n_out: int = 1
    hidden: int = 128
    dropout: float = 0.25
    heads: int = 4
    gene_tokens: int = 4
    xattn_dir: str = "gene2img"
    missing_tokens: bool = False
    feature_norm: bool = True  # scale-free patch tokens and pooled image embedding (LayerNorm)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return cls(**{"feature_norm": False, **d})  # checkpoints from before feature_norm had none


def build_model(cfg: ModelConfig) -> FusionModel:
    """Create the fusion named in ``cfg`` (unknown names list the choices)."""
    factory = FUSIONS.get(cfg.fusion)
    AGGREGATORS.get(cfg.aggregator)
    if cfg.hidden % max(cfg.heads, 1) != 0:
        raise InputError(f"--hidden {cfg.hidden} is not divisible by --heads {cfg.heads}",
                         fix="pick --heads that divides --hidden, e.g. --hidden 128 --heads 4")
    if cfg.xattn_dir not in XATTN_DIRS:
        raise InputError(f"unknown --xattn-dir {cfg.xattn_dir!r}", fix=f"use one of: {', '.join(XATTN_DIRS)}")
    if cfg.gene_tokens < 1:
        raise InputError("--gene-tokens must be at least 1")
    return factory(cfg)


# --------------------------------------------------------------------------- branches
class GeneBranch(nn.Module):
    """MLP from the recipe-transformed expression vector to an embedding (and optional tokens)."""

    def __init__(self, n_genes: int, hidden: int, dropout: float, tokens: int = 0,
                 missing_token: bool = False) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(n_genes, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(),
        )
        self.n_tokens = tokens
        if tokens:
            self.to_tokens = nn.Linear(hidden, tokens * hidden)
            self.token_norm = nn.LayerNorm(hidden)
        self.missing = nn.Parameter(torch.zeros(hidden)) if missing_token else None

    def forward(self, expr: torch.Tensor, has_expr: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.mlp(expr)
        if self.missing is not None and has_expr is not None:
            emb = torch.where(has_expr[:, None], emb, self.missing.to(emb.dtype).expand_as(emb))
        return emb

    def tokens(self, emb: torch.Tensor) -> torch.Tensor:
        b, h = emb.shape
        return self.token_norm(self.to_tokens(emb).view(b, self.n_tokens, h))


class ScaleFreeNorm(nn.Module):
    """LayerNorm of ``x / rms(x)``: the same as LayerNorm, but exact for any feature scale.

    Stored patch features differ in scale by orders of magnitude between encoders (random-weight
    ResNet-50: L2 norm ~1,000; others ~1-30); dividing by the RMS first keeps LayerNorm's epsilon
    from mattering for tiny features, so ``x * 100`` and ``x * 0.01`` give the same tokens.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = x.float().pow(2).mean(dim=-1, keepdim=True).sqrt().clamp_min(1e-12)
        return self.norm((x.float() / rms).to(x.dtype))


class ImageBranch(nn.Module):
    """Per-patch projection of stored features, then an aggregator over the valid patches.

    With ``norm`` (the default), patch features are normalised before the projection and the
    pooled embedding ends in a LayerNorm, like the gene embedding: neither branch can drown the
    other by the scale of its inputs.
    """

    def __init__(self, feat_dim: int, hidden: int, dropout: float, aggregator: str,
                 missing_token: bool = False, norm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [ScaleFreeNorm(feat_dim)] if norm else []
        self.proj = nn.Sequential(*layers, nn.Linear(feat_dim, hidden), nn.GELU(), nn.Dropout(dropout))
        self.agg = AGGREGATORS.create(aggregator, hidden, hidden, dropout)
        self.pool_norm = nn.LayerNorm(hidden) if norm else nn.Identity()
        self.missing = nn.Parameter(torch.zeros(hidden)) if missing_token else None

    def tokens(self, feats: torch.Tensor, mask: torch.Tensor,
               has_img: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens (B, N, H) and mask; a patient without slides gets the missing token."""
        tok = self.proj(feats)
        if self.missing is not None and has_img is not None:
            absent = ~has_img
            first = torch.zeros_like(mask)
            first[:, 0] = True
            slot = absent[:, None] & first
            tok = torch.where(slot[..., None], self.missing.to(tok.dtype).expand_as(tok), tok)
            mask = torch.where(absent[:, None], first, mask)
        return tok, mask

    def pool(self, tok: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, w = self.agg(tok, mask)
        return self.pool_norm(pooled), w


def _head(dim: int, n_out: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.LayerNorm(dim), nn.Dropout(dropout), nn.Linear(dim, n_out))


def _real_weights(w: torch.Tensor, has_img: torch.Tensor | None) -> torch.Tensor:
    """Zero the weight that sat on a missing-slide token: it is not a patch."""
    w = w.float()
    return w if has_img is None else w * has_img[:, None].to(w.dtype)


# --------------------------------------------------------------------------- fusions
class FusionModel(nn.Module):
    """Base class: which branches a fusion uses decides which patients it can see (--missing drop)."""

    uses_gene: bool = True
    uses_image: bool = True

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if self.uses_gene:
            tokens = cfg.gene_tokens if cfg.fusion == "xattn" else 0
            self.gene = GeneBranch(cfg.n_genes, cfg.hidden, cfg.dropout, tokens, cfg.missing_tokens)
        if self.uses_image:
            self.image = ImageBranch(cfg.feat_dim, cfg.hidden, cfg.dropout, cfg.aggregator,
                                     cfg.missing_tokens, cfg.feature_norm)

    def _image(self, feats: torch.Tensor, mask: torch.Tensor, has_img: torch.Tensor | None):
        tok, m = self.image.tokens(feats, mask, has_img if self.cfg.missing_tokens else None)
        pooled, w = self.image.pool(tok, m)
        return tok, m, pooled, w

    def forward(self, expr: torch.Tensor | None, feats: torch.Tensor | None,
                mask: torch.Tensor | None, has_expr: torch.Tensor | None = None,
                has_img: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError


@FUSIONS.register("gene")
class GeneOnly(FusionModel):
    uses_image = False

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.head = _head(cfg.hidden, cfg.n_out, cfg.dropout)

    def forward(self, expr, feats, mask, has_expr=None, has_img=None):
        return {"logits": self.head(self.gene(expr, has_expr))}


@FUSIONS.register("image")
class ImageOnly(FusionModel):
    uses_gene = False

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.head = _head(cfg.hidden, cfg.n_out, cfg.dropout)

    def forward(self, expr, feats, mask, has_expr=None, has_img=None):
        _, _, pooled, w = self._image(feats, mask, has_img)
        return {"logits": self.head(pooled), "attention": _real_weights(w, has_img)}


@FUSIONS.register("concat")
class ConcatFusion(FusionModel):
    """Early fusion: one head over both embeddings side by side."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.head = _head(2 * cfg.hidden, cfg.n_out, cfg.dropout)

    def forward(self, expr, feats, mask, has_expr=None, has_img=None):
        g = self.gene(expr, has_expr)
        _, _, pooled, w = self._image(feats, mask, has_img)
        return {"logits": self.head(torch.cat([g, pooled], dim=-1)),
                "attention": _real_weights(w, has_img)}


@FUSIONS.register("late")
class LateFusion(FusionModel):
    """Each branch its own head; logits mixed with learned (softmax) weights."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.gene_head = _head(cfg.hidden, cfg.n_out, cfg.dropout)
        self.image_head = _head(cfg.hidden, cfg.n_out, cfg.dropout)
        self.mix = nn.Parameter(torch.zeros(2))

    def forward(self, expr, feats, mask, has_expr=None, has_img=None):
        lg = self.gene_head(self.gene(expr, has_expr))
        _, _, pooled, w = self._image(feats, mask, has_img)
        li = self.image_head(pooled)
        a = torch.softmax(self.mix, dim=0).to(lg.dtype)
        return {"logits": a[0] * lg + a[1] * li, "logits_gene": lg, "logits_image": li,
                "attention": _real_weights(w, has_img)}


@FUSIONS.register("xattn")
class CrossAttentionFusion(FusionModel):
    """Multi-head cross-attention between gene tokens and patch tokens (torch's attention).

    ``gene2img``: gene tokens query the patches, with the aggregator's patch weights as a prior
    on where they look (attention logits + log weight: ``mean`` = uniform = plain cross-attention,
    ``abmil`` = a learned patch prior, trained through the attention); ``img2gene``: patches query
    the gene tokens and are then pooled by the aggregator; ``both``: the two, concatenated.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        h, d = cfg.hidden, cfg.xattn_dir
        self.g2i = nn.MultiheadAttention(h, cfg.heads, dropout=cfg.dropout, batch_first=True) \
            if d in ("gene2img", "both") else None
        self.i2g = nn.MultiheadAttention(h, cfg.heads, dropout=cfg.dropout, batch_first=True) \
            if d in ("img2gene", "both") else None
        old = not cfg.feature_norm  # checkpoints from before feature_norm hold both norms
        self.norm_g = nn.LayerNorm(h) if self.g2i is not None or old else None
        self.norm_i = nn.LayerNorm(h) if self.i2g is not None or old else None
        # checkpoints from before feature_norm had no aggregator prior on gene2img
        self.prior = cfg.feature_norm and self.g2i is not None
        if self.i2g is None:
            self.image.pool_norm = nn.Identity()  # gene2img never pools the patch tokens
        self.heads = cfg.heads
        self.head = _head(h * (2 if d == "both" else 1), cfg.n_out, cfg.dropout)

    def forward(self, expr, feats, mask, has_expr=None, has_img=None):
        g_tok = self.gene.tokens(self.gene(expr, has_expr))  # (B, T, H)
        p_tok, m = self.image.tokens(feats, mask, has_img if self.cfg.missing_tokens else None)
        parts: list[torch.Tensor] = []
        out: dict[str, torch.Tensor] = {}
        if self.g2i is not None:
            if self.prior:
                att, w = self.g2i(g_tok, p_tok, p_tok, attn_mask=self._prior(p_tok, m, g_tok.shape[1]),
                                  need_weights=True, average_attn_weights=True)
            else:
                att, w = self.g2i(g_tok, p_tok, p_tok, key_padding_mask=~m, need_weights=True,
                                  average_attn_weights=True)  # w: (B, T, N), mean over heads
            parts.append(self.norm_g(g_tok + att).mean(dim=1))
            out["attention"] = _real_weights(w.mean(dim=1), has_img)
        if self.i2g is not None:
            att, _ = self.i2g(p_tok, g_tok, g_tok, need_weights=False)
            pooled, w_mil = self.image.pool(self.norm_i(p_tok + att), m)
            parts.append(pooled)
            key = "attention" if self.g2i is None else "attention_mil"
            out[key] = _real_weights(w_mil, has_img)
        out["logits"] = self.head(torch.cat(parts, dim=-1))
        return out

    def _prior(self, p_tok: torch.Tensor, m: torch.Tensor, n_queries: int) -> torch.Tensor:
        """Additive attention mask (B * heads, T, N): log aggregator weight, -inf on padding."""
        _, w = self.image.agg(p_tok, m)
        bias = torch.where(m, torch.log(w.float().clamp_min(1e-12)), float("-inf")).to(p_tok.dtype)
        b, n = bias.shape
        bias = bias[:, None, None, :].expand(b, self.heads, n_queries, n)
        return bias.reshape(b * self.heads, n_queries, n)
