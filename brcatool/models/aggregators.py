"""Pooling a bag of patch embeddings into one patient embedding (with masks for padding).

Every aggregator returns ``(pooled (B, H), weights (B, N))``; the weights sum to 1 over the
valid patches of each bag, so they can be exported as patch importance.
"""

from __future__ import annotations

import torch
from torch import nn

from brcatool.models.registry import Registry

AGGREGATORS: Registry[nn.Module] = Registry("aggregator")


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis restricted to ``mask``; an all-masked row gives all zeros."""
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.nan_to_num(weights, nan=0.0)


@AGGREGATORS.register("mean")
class MeanPool(nn.Module):
    """Average of the valid patches: the baseline every attention model must beat."""

    def __init__(self, dim: int, hidden: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = mask.to(x.dtype)
        weights = m / m.sum(dim=1, keepdim=True).clamp_min(1.0)
        return torch.einsum("bn,bnh->bh", weights, x), weights


@AGGREGATORS.register("abmil")
class GatedAttentionPool(nn.Module):
    """Gated attention MIL (Ilse et al. 2018): a learned, interpretable weight per patch."""

    def __init__(self, dim: int, hidden: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = hidden or dim
        self.v = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.u = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
        self.w = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.w(self.v(x) * self.u(x)).squeeze(-1)  # (B, N)
        weights = masked_softmax(scores.float(), mask).to(x.dtype)
        return torch.einsum("bn,bnh->bh", weights, x), weights
