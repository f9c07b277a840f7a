"""Tensors of a cohort, the forward pass and inference: what both the fold loop and prediction need."""

from __future__ import annotations

from typing import Any

import numpy as np

from brcatool.bags import RaggedBags
from brcatool.cohort import Cohort
from brcatool.errors import ArtifactError


class Batcher:
    """Tensors of one cohort (features stay float16 in memory; a batch is cast on the way)."""

    def __init__(self, cohort: Cohort, expr: np.ndarray | None, *, gene: bool, image: bool,
                 device: Any, bag_size: int = 0) -> None:
        import torch

        self.device = device
        self.bag_size = int(bag_size)  # > 0: patches drawn per patient per training step (inference: all)
        self.amp = device.type == "cuda"  # bf16 autocast; train_fold also turns it on for big CPU work
        self.gene, self.image = gene, image
        self.has_expr = torch.from_numpy(cohort.has_expr)
        self.has_img = torch.from_numpy(cohort.has_img)
        self.expr = torch.from_numpy(np.ascontiguousarray(expr)) if gene and expr is not None else None
        if image:
            if cohort.features is None:
                raise ArtifactError("image features were not loaded", path=cohort.root)
            self.bags = cohort.features if isinstance(cohort.features, RaggedBags) else None
            if self.bags is None:
                feats = torch.from_numpy(cohort.features)
                self.feats = feats.to(device) if device.type == "cuda" else feats
            self.mask = torch.from_numpy(cohort.mask)
            self.views = int(cohort.features.shape[1])

    def batch(self, idx: np.ndarray, *, generator: Any = None, patch_dropout: float = 0.0,
              modality_dropout: float = 0.0) -> dict[str, Any]:
        """Inputs for patients ``idx``; with a generator: random view per patch and dropouts."""
        import torch

        it = torch.as_tensor(idx, dtype=torch.long)
        dev, nb = self.device, self.device.type == "cuda"
        has_expr, has_img = self.has_expr[it].clone(), self.has_img[it].clone()
        out: dict[str, Any] = {"expr": None, "feats": None, "mask": None}
        if self.gene and self.expr is not None:
            out["expr"] = self.expr[it].to(dev, non_blocking=nb)
        if self.image:
            mask = self.mask[it]
            n = max(int(mask.sum(1).max()), 1)  # patches are left-aligned: trim the padding
            mask = mask[:, :n].clone()
            b = len(idx)
            draw = generator is not None and self.bag_size and n > self.bag_size
            if draw:
                mask = self._bag(mask, generator)
            if generator is not None and self.views > 1:
                view = torch.randint(self.views, (b, n), generator=generator)
            else:
                view = torch.zeros((b, n), dtype=torch.long)
            pos = torch.arange(n)[None, :].expand(b, n)
            cols = None
            if self.bags is not None:
                if draw:  # read only the drawn patches
                    keep = int(mask.sum(1).max())
                    cols = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :keep]
                    mask, view, pos = mask.gather(1, cols), view.gather(1, cols), cols
                feats = torch.from_numpy(self.bags.gather(idx, view.numpy(), pos.numpy(), mask.numpy()))
            else:
                src = it.to(self.feats.device)
                feats = self.feats[src[:, None], view.to(self.feats.device), pos.to(self.feats.device)]
            if generator is not None and patch_dropout > 0:
                drop = torch.rand((b, n), generator=generator) < patch_dropout
                if cols is not None:  # the same draws as the dense path, for the kept columns
                    drop = drop.gather(1, cols)
                kept = mask & ~drop
                mask = torch.where(kept.any(1, keepdim=True), kept, mask)  # keep >= 1 patch
            out["feats"] = feats.to(dev, non_blocking=nb).float()
            out["mask"] = mask.to(dev, non_blocking=nb)
        if generator is not None and modality_dropout > 0 and self.gene and self.image:
            both = has_expr & has_img
            hit = (torch.rand(len(idx), generator=generator) < modality_dropout) & both
            side = torch.rand(len(idx), generator=generator) < 0.5
            has_expr &= ~(hit & side)
            has_img &= ~(hit & ~side)
            if out["mask"] is not None:
                out["mask"] = out["mask"] & has_img[:, None].to(out["mask"].device)
        out["has_expr"] = has_expr.to(dev, non_blocking=nb)
        out["has_img"] = has_img.to(dev, non_blocking=nb)
        return out


    def _bag(self, mask: Any, generator: Any) -> Any:
        """Keep a random ``bag_size`` of each patient's valid patches for one training step.

        Inference (no generator) sees every patch, the usual practice for attention MIL."""
        import torch

        noise = torch.rand(mask.shape, generator=generator)
        order = torch.argsort(torch.where(mask, noise, torch.full_like(noise, 2.0)), dim=1)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(1, mask.shape[1] + 1).expand_as(order).contiguous())
        return mask & (rank <= self.bag_size)


def _forward(model: Any, b: dict[str, Any], device: Any, amp: bool) -> dict[str, Any]:
    import torch

    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
        return model(b["expr"], b["feats"], b["mask"], b["has_expr"], b["has_img"])


def _probs(logits: Any, n_classes: int) -> Any:
    import torch

    logits = logits.float()
    if n_classes == 2:
        p = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


#: Prediction sees every patch, so a batch holds at most this many (padded) patches: full-slide bags
#: of thousands of patches go a few patients at a time (one patient alone when its bag is larger).
PREDICT_PATCH_BUDGET = 32_768


def predict_batches(batcher: Batcher, idx: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive chunks of ``idx``: at most ``batch_size`` patients and, with images, at most
    ``PREDICT_PATCH_BUDGET`` padded patches (patients x the chunk's largest bag)."""
    if not batcher.image:
        return [idx[s:s + batch_size] for s in range(0, len(idx), batch_size)]
    sizes = batcher.mask[idx].sum(1).numpy() if len(idx) else np.zeros(0, np.int64)
    chunks, start, widest = [], 0, 0
    for i, n in enumerate(sizes):
        wider = max(widest, int(n), 1)
        if i > start and (i - start >= batch_size or (i - start + 1) * wider > PREDICT_PATCH_BUDGET):
            chunks.append(idx[start:i])
            start, wider = i, max(int(n), 1)
        widest = wider
    if len(idx):
        chunks.append(idx[start:])
    return chunks


def _run(model: Any, batcher: Batcher, idx: np.ndarray, batch_size: int) -> tuple[Any, np.ndarray | None]:
    """Logits (n, n_out) on CPU and attention (n, N) padded to the cohort's N (None if absent)."""
    import torch

    model.eval()
    logits, atts = [], []
    n_max = batcher.mask.shape[1] if batcher.image else 0
    with torch.no_grad():
        for chunk in predict_batches(batcher, idx, batch_size):
            out = _forward(model, batcher.batch(chunk), batcher.device, batcher.amp)
            logits.append(out["logits"].float().cpu())
            if "attention" in out:
                a = out["attention"].float().cpu().numpy()
                atts.append(np.pad(a, ((0, 0), (0, n_max - a.shape[1]))))
    n_out = model.cfg.n_out
    lg = torch.cat(logits) if logits else torch.zeros((0, n_out))
    return lg, (np.concatenate(atts) if atts else None)


def infer(model: Any, batcher: Batcher, idx: np.ndarray, n_classes: int, *,
          batch_size: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
    """Class probabilities (n, C) and per-patch attention (n, N) (None when the model has none)."""
    lg, att = _run(model, batcher, idx, batch_size)
    return _probs(lg, n_classes).numpy().astype(np.float64), att


def eligible(cohort: Cohort, fusion: str, missing: str) -> np.ndarray:
    """Patients a fusion can use: every needed modality (drop) or at least one of them (mask)."""
    from brcatool.models import FUSIONS

    kind = FUSIONS.get(fusion)
    if missing == "mask" and kind.uses_gene and kind.uses_image:
        return cohort.has_expr | cohort.has_img
    return cohort.available(gene=kind.uses_gene, image=kind.uses_image)



def correct_probs(probs: np.ndarray, class_log_weight: Any) -> np.ndarray:
    """Undo a class-weighted loss: a model trained with weight w_c outputs q_c ∝ w_c p_c, so
    p_c ∝ q_c / w_c (binary: logit - log pos_weight). Zero log weights return ``probs`` as is."""
    lw = np.asarray(class_log_weight, dtype=np.float64)
    if not lw.any():
        return probs
    p = probs * np.exp(-lw)[None, :]
    return p / p.sum(axis=1, keepdims=True)


def oof_probs(oof: Any, classes: list[str]) -> np.ndarray:
    """(n, C) probabilities from an oof table (binary: [1 - prob, prob])."""
    if len(classes) == 2:
        p = oof["prob"].to_numpy()
        return np.stack([1 - p, p], axis=1)
    return oof.select([f"prob_{c}" for c in classes]).to_numpy()


def calibration_probs(oof: Any, classes: list[str]) -> np.ndarray:
    """The probabilities calibration and the Brier score describe: ``cal_prob``/``cal_prob_<class>``
    (the loss's class weighting undone) where the table has them, else ``oof_probs``."""
    if len(classes) == 2:
        if "cal_prob" not in oof.columns:
            return oof_probs(oof, classes)
        p = oof["cal_prob"].to_numpy()
        return np.stack([1 - p, p], axis=1)
    cols = [f"cal_prob_{c}" for c in classes]
    return oof.select(cols).to_numpy() if all(c in oof.columns for c in cols) else oof_probs(oof, classes)
