"""One fold: fit the expression recipe and a model on the training fold, predict the outer fold.

Honesty rules kept here: the expression recipe is fitted on the training fold only, early
stopping and threshold tuning use an inner split of the training fold, and the outer
validation fold is touched once, for out-of-fold predictions.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from brcatool import config
from brcatool import metrics as M
from brcatool.cohort import Cohort
from brcatool.devices import cpu_has_bf16, torch_device
from brcatool.errors import InputError
from brcatool.training.batching import (
    Batcher,
    _forward,
    _probs,
    _run,
    correct_probs,
    infer,
)
from brcatool.training.settings import TrainConfig


def _inner_split(idx: np.ndarray, y: np.ndarray, frac: float, seed: int,
                 groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(inner training, inner validation) positions of ``idx`` (early stopping, threshold).

    ``groups`` (one per cohort patient, e.g. sites under --split site): whole groups on one side,
    stratified as far as they allow (StratifiedGroupKFold, one fold ~ ``frac``), when ``idx``
    spans >= 2 of them; else by patient. A site in both would flatter the inner validation just
    as it would the outer one.
    """
    import warnings

    from sklearn.model_selection import ShuffleSplit, StratifiedGroupKFold, StratifiedShuffleSplit

    g = None if groups is None else np.asarray(groups)[idx]
    if g is not None and len(np.unique(g)) >= 2:
        k = int(min(len(np.unique(g)), max(2, round(1 / max(frac, 1e-6)))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # classes smaller than k: sklearn spreads them as it can
            tr, va = next(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
                          .split(np.zeros(len(idx)), y, g))
        return idx[np.sort(tr)], idx[np.sort(va)]
    n_val = max(1, int(round(frac * len(idx))))
    try:
        sss = StratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
        tr, va = next(sss.split(np.zeros(len(idx)), y))
    except ValueError:  # a class too small to stratify: plain shuffle
        tr, va = next(ShuffleSplit(n_splits=1, test_size=n_val, random_state=seed).split(idx))
    return idx[np.sort(tr)], idx[np.sort(va)]


def _sites(cohort: Cohort, cfg: TrainConfig) -> np.ndarray | None:
    """Every patient's site under ``--split site`` (the outer split's groups), else None."""
    if cfg.split != "site":
        return None
    from brcatool.artifacts import Workdir
    from brcatool.splits import patient_sites

    return np.asarray(patient_sites(cohort, cfg.site_column, Workdir(cohort.root)))


def class_weights(cfg: TrainConfig, y_train: np.ndarray, n_classes: int) -> np.ndarray | None:
    """The loss weight of each class (binary: [1, pos_weight]); None without weighting."""
    pw = cfg.pos_weight_value()
    counts = np.bincount(y_train, minlength=n_classes).astype(np.float64)
    if n_classes == 2:
        if pw == "auto":
            pw = counts[0] / max(counts[1], 1.0)
        return None if pw is None else np.array([1.0, float(pw)])
    if pw == "auto":
        return counts.sum() / (n_classes * np.maximum(counts, 1.0))
    if pw is not None:
        raise InputError("--pos-weight NUMBER applies to binary tasks only", fix="use auto or none")
    return None


def _criterion(weights: np.ndarray | None, n_classes: int, device: Any) -> Any:
    import torch
    from torch import nn

    if n_classes == 2:
        pw = None if weights is None else torch.tensor([float(weights[1])], device=device)
        loss = nn.BCEWithLogitsLoss(pos_weight=pw)
        return lambda logits, y: loss(logits[:, 0].float(), y.float())
    w = None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)
    loss = nn.CrossEntropyLoss(weight=w)
    return lambda logits, y: loss(logits.float(), y)


def _check_finite(value: float, what: str, cfg: TrainConfig, repeat: int, fold: int) -> None:
    """A non-finite loss or prediction fails the fold with one line (never a NaN in the metrics)."""
    if not math.isfinite(value):
        where = f"fold {fold}" + (f" (repeat {repeat})" if repeat else "")
        raise InputError(f"run {cfg.name or cfg.fusion!r}: {what} is not finite in {where}",
                         fix="lower --lr, check the features and expression for NaN/inf, or try --device cpu")


@dataclass
class FoldOutput:
    repeat: int
    fold: int
    val_idx: np.ndarray
    probs: np.ndarray
    threshold: float
    best_epoch: int
    epochs: list[dict[str, Any]]
    checkpoint: dict[str, Any]
    cal_probs: np.ndarray | None = None  # probs with the loss's class weighting undone


def train_fold(cohort: Cohort, train_idx: np.ndarray, val_idx: np.ndarray, cfg: TrainConfig, *,
               repeat: int = 0, fold: int = 0, device: Any = None,
               on_epoch: Any = None) -> FoldOutput:
    """Fit the recipe and a model on ``train_idx``; predict ``val_idx`` (the outer fold)."""
    import torch

    from brcatool.expression import Recipe
    from brcatool.models import FUSIONS, ModelConfig, build_model

    cohort = cohort.for_repeat(repeat)  # a sanity variant drawn per repeat (labels, bags)
    device = device or torch_device(cfg.device)
    kind = FUSIONS.get(cfg.fusion)
    gene, image = kind.uses_gene, kind.uses_image
    seed = cfg.seed * 100_003 + repeat * 1_009 + fold
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    C = len(cohort.classes)

    recipe = None
    expr = None
    if gene:
        rows = train_idx[cohort.has_expr[train_idx]]
        recipe = Recipe.from_settings(cohort.recipe_settings).fit(cohort.expression[rows], cohort.genes)
        expr = np.zeros((cohort.n, len(recipe.genes_out)), dtype=np.float32)
        expr[cohort.has_expr] = recipe.transform(cohort.expression[cohort.has_expr])
        keep = np.ones(cohort.n, dtype=bool)
        keep[rows] = recipe.keep_rows(cohort.expression[rows])
        train_idx = train_idx[keep[train_idx]]  # outlier rows leave training only
    inner_tr, inner_va = _inner_split(train_idx, cohort.targets[train_idx], cfg.val_frac, seed,
                                      groups=_sites(cohort, cfg))
    mcfg = ModelConfig(fusion=cfg.fusion, aggregator=cfg.aggregator,
                       n_genes=expr.shape[1] if expr is not None else 0, feat_dim=cohort.feat_dim,
                       n_out=1 if C == 2 else C, hidden=cfg.hidden, dropout=cfg.dropout,
                       heads=cfg.heads, gene_tokens=cfg.gene_tokens, xattn_dir=cfg.xattn_dir,
                       missing_tokens=cfg.missing == "mask")
    model = build_model(mcfg).to(device)
    opt_cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    opt = opt_cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    weights = class_weights(cfg, cohort.targets[inner_tr], C)
    crit = _criterion(weights, C, device)
    batcher = Batcher(cohort, expr, gene=gene, image=image, device=device, bag_size=cfg.bag_size)
    if device.type == "cpu" and image and is_big(cohort, cfg) and cpu_has_bf16():
        batcher.amp = True  # ~1.5x faster steps where the patch projection dominates
    y_all = torch.from_numpy(cohort.targets)
    mod_drop = cfg.modality_dropout if cfg.missing == "mask" else 0.0

    best, best_state, best_epoch, bad = math.inf, None, 0, 0
    log: list[dict[str, Any]] = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = inner_tr[torch.randperm(len(inner_tr), generator=gen).numpy()]
        total = 0.0
        for s in range(0, len(order), cfg.batch_size):
            chunk = order[s:s + cfg.batch_size]
            b = batcher.batch(chunk, generator=gen, patch_dropout=cfg.patch_dropout,
                              modality_dropout=mod_drop)
            loss = crit(_forward(model, b, device, batcher.amp)["logits"], y_all[chunk].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(chunk)
        _check_finite(total, f"the training loss (epoch {epoch})", cfg, repeat, fold)
        val_logits, _ = _run(model, batcher, inner_va, 64)
        with torch.no_grad():
            val_loss = float(crit(val_logits.to(device), y_all[inner_va].to(device)))
        _check_finite(val_loss, f"the validation loss (epoch {epoch})", cfg, repeat, fold)
        vp = _probs(val_logits, C).numpy()
        val_metric = M.roc_auc(cohort.targets[inner_va], vp)
        log.append({"repeat": repeat, "fold": fold, "epoch": epoch, "train_loss": total / len(order),
                    "val_loss": val_loss, "val_metric": val_metric})
        if on_epoch is not None:
            on_epoch(log[-1])
        if val_loss < best - 1e-6:
            best, best_epoch, bad = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)

    threshold = cfg.threshold_value()
    if threshold is None:
        vp, _ = infer(model, batcher, inner_va, C)
        threshold = M.best_f1_threshold(cohort.targets[inner_va], vp[:, 1]) if C == 2 else 0.5
    probs, _ = infer(model, batcher, val_idx, C)
    _check_finite(float(probs.sum()), "a predicted probability", cfg, repeat, fold)
    log_w = np.zeros(C) if weights is None else np.log(weights)
    ckpt = {
        "format": "brcatool-fold-model", "version": 1,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": mcfg.to_dict(), "recipe": recipe.to_dict() if recipe else None,
        "genes_in": list(cohort.genes) if gene else [], "classes": list(cohort.classes),
        "task": cohort.task, "threshold": float(threshold), "encoder": dict(cohort.encoder) if image else {},
        "missing": cfg.missing, "train_config": config.to_dict(cfg), "repeat": repeat, "fold": fold,
        "best_epoch": best_epoch, "n_train": int(len(inner_tr)), "n_inner_val": int(len(inner_va)),
        "bf16": bool(batcher.amp), "bag_size": int(cfg.bag_size),
        "class_log_weight": [float(v) for v in log_w],  # undone by correct_probs (calibration)
    }
    return FoldOutput(repeat=repeat, fold=fold, val_idx=val_idx, probs=probs, threshold=float(threshold),
                      best_epoch=best_epoch, epochs=log, checkpoint=ckpt,
                      cal_probs=correct_probs(probs, log_w))



# multiply-adds of one batch through the first layers above which a model counts as big: more
# torch threads (up to the idle cores) and bf16 autocast on CPU pay off
BIG_WORK = 2e7


def _work(cohort: Cohort, cfg: TrainConfig) -> float:
    """Rough multiply-adds of one batch through the first layers (only the modalities the fusion uses)."""
    from brcatool.models import FUSIONS

    kind = FUSIONS.get(cfg.fusion)
    img = cohort.mask.shape[1] * cohort.feat_dim if kind.uses_image else 0
    gene = cohort.expression.shape[1] if kind.uses_gene else 0
    return cfg.batch_size * cfg.hidden * (img + gene)


def is_big(cohort: Cohort, cfg: TrainConfig) -> bool:
    """Whether one batch is heavy enough for several threads and CPU bf16 (see ``BIG_WORK``)."""
    return _work(cohort, cfg) > BIG_WORK

