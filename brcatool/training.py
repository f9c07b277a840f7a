"""The train stage: one fold, the cross-validation loop and run outputs (predicting: ``prediction``).

Honesty rules kept here: the expression recipe is fitted on the training fold only, early
stopping and threshold tuning use an inner split of the training fold, and the outer
validation fold is touched once, for out-of-fold predictions.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brcatool import artifacts, config
from brcatool import metrics as M
from brcatool.artifacts import Manifest, Workdir
from brcatool.cohort import Cohort, Splits, get_splits, load_cohort
from brcatool.errors import ArtifactError, InputError

MISSING_MODES = ("drop", "mask")


@dataclass
class TrainSettings:
    """Training options shared by ``train`` and ``ablate``: one definition, so they cannot drift."""

    encoder: str | None = None
    folds: int = 5
    repeats: int = 1
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 32
    patience: int = 6
    hidden: int = 128
    dropout: float = 0.25
    heads: int = 4
    missing: str = "drop"
    threshold: str = "0.5"
    device: str = "auto"
    seed: int = 0
    overwrite: bool = False

    def shared(self) -> dict[str, Any]:
        """These settings alone, to build a TrainConfig from any subclass."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainSettings)}


@dataclass
class TrainConfig(TrainSettings):
    """Options of ``brcatool train`` (defaults = the CLI's)."""

    fusion: str = "xattn"
    aggregator: str = "abmil"
    gene_tokens: int = 4
    xattn_dir: str = "gene2img"
    patch_dropout: float = 0.0
    pos_weight: str = "auto"
    modality_dropout: float = 0.0
    val_frac: float = 0.2
    name: str | None = None

    def validate(self) -> None:
        from brcatool.models import AGGREGATORS, FUSIONS

        FUSIONS.get(self.fusion)
        AGGREGATORS.get(self.aggregator)
        checks = [
            (self.missing in MISSING_MODES, f"--missing must be drop or mask, got {self.missing!r}"),
            (self.epochs >= 1 and self.batch_size >= 1 and self.patience >= 1,
             "--epochs, --batch-size and --patience must be at least 1"),
            (self.lr > 0 and self.weight_decay >= 0, "--lr must be > 0 and --weight-decay >= 0"),
            (0 <= self.patch_dropout < 1 and 0 <= self.dropout < 1 and 0 <= self.modality_dropout < 1,
             "dropout rates must be in [0, 1)"),
            (0 < self.val_frac < 0.5, "val_frac must be in (0, 0.5)"),
            (self.hidden >= 1 and self.heads >= 1, "--hidden and --heads must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        self.threshold_value()
        self.pos_weight_value()

    def threshold_value(self) -> float | None:
        """None = tuned on the inner validation split."""
        if str(self.threshold) == "tuned":
            return None
        try:
            t = float(self.threshold)
        except ValueError:
            t = math.nan
        if not 0 < t < 1:
            raise InputError(f"--threshold must be a number in (0, 1) or 'tuned', got {self.threshold!r}")
        return t

    def pos_weight_value(self) -> float | str | None:
        if str(self.pos_weight) in ("auto", "none"):
            return None if self.pos_weight == "none" else "auto"
        try:
            w = float(self.pos_weight)
        except ValueError:
            w = -1.0
        if w <= 0:
            raise InputError(f"--pos-weight must be auto, none or a number > 0, got {self.pos_weight!r}")
        return w

    def params(self) -> dict[str, Any]:
        """What decides the result (compared on re-runs): not the name, device or --overwrite."""
        d = config.to_dict(self)
        for k in ("name", "device", "overwrite"):
            d.pop(k)
        return d


@dataclass
class TrainResult:
    name: str
    run_dir: Path
    task: str
    classes: list[str]
    n_patients: int
    folds: int
    repeats: int
    metrics: dict[str, float]
    per_fold: list[dict[str, Any]] = field(default_factory=list)
    splits_created: bool = False
    skipped: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        m = self.metrics
        fmt = " ".join(f"{k} {m.get(k, math.nan):.3f}" if m.get(k) is not None else f"{k} n/a"
                       for k in M.METRIC_NAMES)
        return (f"{self.name}: {fmt} ({self.folds} folds x {self.repeats}, {self.n_patients} patients, "
                f"{self.seconds:.1f} s) -> {self.run_dir}")


# --------------------------------------------------------------------------- batching
def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown --device {name!r}", fix="use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda asked for but no CUDA GPU is available", fix="use --device cpu")
    return dev


class Batcher:
    """Tensors of one cohort (features stay float16 in memory; a batch is cast on the way)."""

    def __init__(self, cohort: Cohort, expr: np.ndarray | None, *, gene: bool, image: bool,
                 device: Any) -> None:
        import torch

        self.device = device
        self.amp = device.type == "cuda"  # bf16 autocast; train_fold also turns it on for big CPU work
        self.gene, self.image = gene, image
        self.has_expr = torch.from_numpy(cohort.has_expr)
        self.has_img = torch.from_numpy(cohort.has_img)
        self.expr = torch.from_numpy(np.ascontiguousarray(expr)) if gene and expr is not None else None
        if image:
            if cohort.features is None:
                raise ArtifactError("image features were not loaded", path=cohort.root)
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
            if generator is not None and self.views > 1:
                view = torch.randint(self.views, (b, n), generator=generator)
            else:
                view = torch.zeros((b, n), dtype=torch.long)
            pos = torch.arange(n)[None, :].expand(b, n)
            src = it.to(self.feats.device)
            feats = self.feats[src[:, None], view.to(self.feats.device), pos.to(self.feats.device)]
            if generator is not None and patch_dropout > 0:
                drop = torch.rand((b, n), generator=generator) < patch_dropout
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


def _forward(model: Any, b: dict[str, Any], device: Any, amp: bool) -> dict[str, Any]:
    import torch

    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
        return model(b["expr"], b["feats"], b["mask"], b["has_expr"], b["has_img"])


def _cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (else autocast would be slower, not faster)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _probs(logits: Any, n_classes: int) -> Any:
    import torch

    logits = logits.float()
    if n_classes == 2:
        p = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def _run(model: Any, batcher: Batcher, idx: np.ndarray, batch_size: int) -> tuple[Any, np.ndarray | None]:
    """Logits (n, n_out) on CPU and attention (n, N) padded to the cohort's N (None if absent)."""
    import torch

    model.eval()
    logits, atts = [], []
    n_max = batcher.mask.shape[1] if batcher.image else 0
    with torch.no_grad():
        for s in range(0, len(idx), batch_size):
            out = _forward(model, batcher.batch(idx[s:s + batch_size]), batcher.device, batcher.amp)
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


# --------------------------------------------------------------------------- one fold
def _inner_split(idx: np.ndarray, y: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit

    n_val = max(1, int(round(frac * len(idx))))
    try:
        sss = StratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
        tr, va = next(sss.split(np.zeros(len(idx)), y))
    except ValueError:  # a class too small to stratify: plain shuffle
        tr, va = next(ShuffleSplit(n_splits=1, test_size=n_val, random_state=seed).split(idx))
    return idx[np.sort(tr)], idx[np.sort(va)]


def _criterion(cfg: TrainConfig, y_train: np.ndarray, n_classes: int, device: Any) -> Any:
    import torch
    from torch import nn

    pw = cfg.pos_weight_value()
    counts = np.bincount(y_train, minlength=n_classes).astype(np.float64)
    if n_classes == 2:
        if pw == "auto":
            pw = counts[0] / max(counts[1], 1.0)
        weight = None if pw is None else torch.tensor([float(pw)], device=device)
        loss = nn.BCEWithLogitsLoss(pos_weight=weight)
        return lambda logits, y: loss(logits[:, 0].float(), y.float())
    weight = None
    if pw == "auto":
        weight = torch.tensor(counts.sum() / (n_classes * np.maximum(counts, 1.0)), dtype=torch.float32,
                              device=device)
    elif pw is not None:
        raise InputError("--pos-weight NUMBER applies to binary tasks only", fix="use auto or none")
    loss = nn.CrossEntropyLoss(weight=weight)
    return lambda logits, y: loss(logits.float(), y)


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


def train_fold(cohort: Cohort, train_idx: np.ndarray, val_idx: np.ndarray, cfg: TrainConfig, *,
               repeat: int = 0, fold: int = 0, device: Any = None,
               on_epoch: Any = None) -> FoldOutput:
    """Fit the recipe and a model on ``train_idx``; predict ``val_idx`` (the outer fold)."""
    import torch

    from brcatool.expression import Recipe
    from brcatool.models import FUSIONS, ModelConfig, build_model

    device = device or _device(cfg.device)
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
    inner_tr, inner_va = _inner_split(train_idx, cohort.targets[train_idx], cfg.val_frac, seed)
    mcfg = ModelConfig(fusion=cfg.fusion, aggregator=cfg.aggregator,
                       n_genes=expr.shape[1] if expr is not None else 0, feat_dim=cohort.feat_dim,
                       n_out=1 if C == 2 else C, hidden=cfg.hidden, dropout=cfg.dropout,
                       heads=cfg.heads, gene_tokens=cfg.gene_tokens, xattn_dir=cfg.xattn_dir,
                       missing_tokens=cfg.missing == "mask")
    model = build_model(mcfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    crit = _criterion(cfg, cohort.targets[inner_tr], C, device)
    batcher = Batcher(cohort, expr, gene=gene, image=image, device=device)
    if device.type == "cpu" and image and is_big(cohort, cfg) and _cpu_bf16():
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
        val_logits, _ = _run(model, batcher, inner_va, 64)
        with torch.no_grad():
            val_loss = float(crit(val_logits.to(device), y_all[inner_va].to(device)))
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
    ckpt = {
        "format": "brcatool-fold-model", "version": 1,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": mcfg.to_dict(), "recipe": recipe.to_dict() if recipe else None,
        "genes_in": list(cohort.genes) if gene else [], "classes": list(cohort.classes),
        "task": cohort.task, "threshold": float(threshold), "encoder": dict(cohort.encoder) if image else {},
        "missing": cfg.missing, "train_config": config.to_dict(cfg), "repeat": repeat, "fold": fold,
        "best_epoch": best_epoch, "n_train": int(len(inner_tr)), "n_inner_val": int(len(inner_va)),
        "bf16": bool(batcher.amp),
    }
    return FoldOutput(repeat=repeat, fold=fold, val_idx=val_idx, probs=probs, threshold=float(threshold),
                      best_epoch=best_epoch, epochs=log, checkpoint=ckpt)


# --------------------------------------------------------------------------- the CV loop
def fold_dirname(repeat: int, fold: int, repeats: int = 1) -> str:
    """``fold_<k>``; with several repeats ``repeat_<r>_fold_<k>``."""
    return f"fold_{fold}" if repeats == 1 else f"repeat_{repeat}_fold_{fold}"


def eligible(cohort: Cohort, fusion: str, missing: str) -> np.ndarray:
    """Patients a fusion can use: every needed modality (drop) or at least one of them (mask)."""
    from brcatool.models import FUSIONS

    kind = FUSIONS.get(fusion)
    if missing == "mask" and kind.uses_gene and kind.uses_image:
        return cohort.has_expr | cohort.has_img
    return cohort.available(gene=kind.uses_gene, image=kind.uses_image)


def _oof_table(cohort: Cohort, outs: list[FoldOutput]) -> Any:
    import polars as pl

    frames = []
    for o in outs:
        cols: dict[str, Any] = {
            "patient_id": [cohort.patient_ids[i] for i in o.val_idx],
            "repeat": np.full(len(o.val_idx), o.repeat, dtype=np.int64),
            "fold": np.full(len(o.val_idx), o.fold, dtype=np.int64),
            "target": cohort.targets[o.val_idx],
        }
        if len(cohort.classes) == 2:
            cols["prob"] = o.probs[:, 1]
            cols["pred"] = (o.probs[:, 1] >= o.threshold).astype(np.int64)
        else:
            for c, name in enumerate(cohort.classes):
                cols[f"prob_{name}"] = o.probs[:, c]
            cols["pred"] = o.probs.argmax(1).astype(np.int64)
        frames.append(pl.DataFrame(cols))
    return pl.concat(frames).sort("repeat", "patient_id")


def _metrics(oof: Any, outs: list[FoldOutput], classes: list[str]) -> dict[str, Any]:
    from brcatool.prediction import oof_probs  # local: prediction imports this module

    per_fold = []
    for o, (_, part) in zip(outs, sorted(oof.group_by(["repeat", "fold"]), key=lambda g: g[0]),
                            strict=True):
        m = M.compute(part["target"].to_numpy(), oof_probs(part, classes), pred=part["pred"].to_numpy())
        per_fold.append({"repeat": o.repeat, "fold": o.fold, "n": part.height, "threshold": o.threshold,
                         "best_epoch": o.best_epoch, **m})
    pooled_by_repeat = []
    for _, part in sorted(oof.group_by("repeat"), key=lambda g: g[0]):
        pooled_by_repeat.append(M.compute(part["target"].to_numpy(), oof_probs(part, classes),
                                          pred=part["pred"].to_numpy()))
    pooled = {k: float(np.nanmean([p[k] for p in pooled_by_repeat])) for k in M.METRIC_NAMES}
    mean = {k: float(np.nanmean([f[k] for f in per_fold])) for k in M.METRIC_NAMES}
    sd = {k: float(np.nanstd([f[k] for f in per_fold], ddof=1)) if len(per_fold) > 1 else math.nan
          for k in M.METRIC_NAMES}
    return {"classes": classes, "per_fold": per_fold, "fold_mean": mean, "fold_sd": sd,
            "pooled": pooled, "pooled_per_repeat": pooled_by_repeat}


def _default_name(cfg: TrainConfig, wd: Workdir) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{cfg.fusion}-{cfg.aggregator}-{stamp}"
    name, i = base, 1
    while wd.run_dir(name).exists():
        i += 1
        name = f"{base}-{i}"
    return name


def _progress(enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[info]}"), disable=not enabled,
                    transient=True)


def _threads(cohort: Cohort, cfg: TrainConfig, default: int) -> int:
    """Torch threads: one for small models, and no more than the idle cores for big ones.

    On a shared CPU, threads beyond the idle cores spin at every barrier: measured 5-15x slower
    than one thread on a loaded 2-core machine.
    """
    if not is_big(cohort, cfg):
        return 1
    try:
        idle = (os.cpu_count() or default) - os.getloadavg()[0]
    except OSError:
        return default
    return max(1, min(default, int(idle + 0.5)))


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


def _cross_validate(cohort: Cohort, splits: Splits, ok: np.ndarray, cfg: TrainConfig, name: str,
                    device: Any, progress: bool) -> list[FoldOutput]:
    outs: list[FoldOutput] = []
    with _progress(progress) as bar:
        folds_task = bar.add_task(f"{name}: folds", total=splits.repeats * splits.folds, info="")
        ep_task = bar.add_task("  epochs", total=cfg.epochs, info="")

        def on_epoch(row: dict[str, Any]) -> None:
            bar.update(ep_task, advance=1, info=f"val_loss {row['val_loss']:.3f}")

        for r in range(splits.repeats):
            for k in range(splits.folds):
                tr, va = splits.indices(r, k)
                tr, va = tr[ok[tr]], va[ok[va]]
                if len(va) == 0 or len(np.unique(cohort.targets[tr])) < 2:
                    raise ArtifactError(f"fold {k} (repeat {r}) has no usable patients after dropping "
                                        "missing modalities", path=splits.path,
                                        fix="use fewer --folds or --missing mask")
                bar.reset(ep_task, total=cfg.epochs, description=f"  fold {k} epochs")
                out = train_fold(cohort, tr, va, cfg, repeat=r, fold=k, device=device, on_epoch=on_epoch)
                outs.append(out)
                bar.advance(folds_task)
                if progress:
                    m = M.compute(cohort.targets[va], out.probs, threshold=out.threshold)
                    bar.console.print(f"  fold {k}{f' (repeat {r})' if splits.repeats > 1 else ''}: "
                                      f"{len(va)} patients, best epoch {out.best_epoch}, "
                                      f"ROC-AUC {m['roc_auc']:.3f}, F1 {m['f1']:.3f}")

    return outs


def is_finished(workdir: Path | Workdir, cfg: TrainConfig) -> bool:
    """Whether ``run_train(workdir, cfg)`` would reuse a finished run (same params, no --overwrite).

    Raises like ``run_train`` when the run exists unfinished or with other parameters.
    """
    if not cfg.name:  # a new time-stamped name
        return False
    wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    name = cfg.name
    run_dir = wd.run_dir(name)
    if not run_dir.exists():
        return False
    manifest = run_dir / "manifest.json"
    if not manifest.exists() and not cfg.overwrite:
        raise ArtifactError("exists but is not a finished run", path=run_dir,
                            fix="pass --overwrite, or another --name")
    return artifacts.check_params(manifest, cfg.params(), overwrite=cfg.overwrite, what=f"run {name!r}")


def run_train(workdir: Path | Workdir, cfg: TrainConfig, *, progress: bool = True,
              cohort: Cohort | None = None, splits: Splits | None = None) -> TrainResult:
    """Cross-validate one model and write ``runs/<name>/``.

    ``cohort``/``splits`` let callers (ablate's sanity checks) pass a modified cohort, e.g. with
    permuted labels, together with the saved split; normally both are loaded from the workdir.
    """
    import polars as pl

    from brcatool.models import FUSIONS

    t0 = time.perf_counter()
    wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    cfg.validate()
    kind = FUSIONS.get(cfg.fusion)
    device = _device(cfg.device)
    name = cfg.name or _default_name(cfg, wd)
    run_dir = wd.run_dir(name)
    params = cfg.params()
    if is_finished(wd, cfg):
        return load_result(run_dir, skipped=True)

    if cohort is None:
        cohort = load_cohort(wd, encoder=cfg.encoder, images=kind.uses_image,
                             expression=kind.uses_gene, progress=progress)
    else:  # e.g. ablate's one cohort with both modalities: keep what this fusion uses
        cohort = cohort.restrict(gene=kind.uses_gene, image=kind.uses_image)
    created = False
    if splits is None:
        splits, created = get_splits(wd, cohort, folds=cfg.folds, repeats=cfg.repeats, seed=cfg.seed)
    elif splits.patient_ids != cohort.patient_ids:
        raise ArtifactError("the split and the cohort list different patients", path=splits.path)
    ok = eligible(cohort, cfg.fusion, cfg.missing)
    if ok.sum() < 2 * splits.folds:
        raise ArtifactError(f"only {int(ok.sum())} patients have the modalities {cfg.fusion!r} needs",
                            path=wd.root, fix="check embed/prep-expr outputs, or try --missing mask")

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(_threads(cohort, cfg, threads))
    try:
        outs = _cross_validate(cohort, splits, ok, cfg, name, device, progress)
    finally:
        torch.set_num_threads(threads)

    oof = _oof_table(cohort, outs)
    mets = {"task": cohort.task, "fusion": cfg.fusion, "aggregator": cfg.aggregator,
            **_metrics(oof, outs, list(cohort.classes))}
    epochs = pl.DataFrame([row for o in outs for row in o.epochs])
    split_ref = {"path": str(splits.path) if splits.path else None, "sha256": splits.sha256(),
                 "cohort_hash": splits.cohort_hash, "folds": splits.folds, "repeats": splits.repeats,
                 "seed": splits.seed}
    manifest = Manifest("train", params)
    for path in (wd.labels_table, wd.expression_table if kind.uses_gene else None,
                 wd.recipe_settings if kind.uses_gene else None, splits.path):
        if path is not None:
            manifest.add_input(path)
    if kind.uses_image and cohort.encoder:
        enc = cohort.encoder["encoder"]
        manifest.add_input(wd.features_dir(enc) / "manifest.json")
        manifest.add_input(wd.features_index(enc))
    seconds = time.perf_counter() - t0
    with artifacts.atomic_path(run_dir) as tmp:
        tmp.mkdir(parents=True)
        config.write_yaml(cfg, tmp / "config.yaml")
        artifacts.write_json(tmp / "splits_ref.json", split_ref)
        for o in outs:
            d = tmp / fold_dirname(o.repeat, o.fold, splits.repeats)
            d.mkdir()
            torch.save(o.checkpoint, d / "model.pt")
        epochs.write_csv(tmp / "epochs.csv")
        artifacts.write_parquet(oof, tmp / "oof.parquet", schema="oof")
        artifacts.write_json(tmp / "metrics.json", M.json_safe(mets))
        manifest.write(tmp / "manifest.json", counts={"patients": int(oof["patient_id"].n_unique()),
                                                      "folds": splits.folds, "repeats": splits.repeats,
                                                      "oof_rows": oof.height},
                       name=name, splits=split_ref, encoder=cohort.encoder if kind.uses_image else {},
                       device=str(device), seconds=round(seconds, 2))
    return TrainResult(name=name, run_dir=run_dir, task=cohort.task, classes=list(cohort.classes),
                       n_patients=int(oof["patient_id"].n_unique()), folds=splits.folds,
                       repeats=splits.repeats, metrics=mets["pooled"], per_fold=mets["per_fold"],
                       splits_created=created, seconds=seconds)


def load_result(run_dir: Path, *, skipped: bool = False) -> TrainResult:
    """A finished run's result from its files (used when a re-run finds it done)."""
    run_dir = Path(run_dir)
    man = artifacts.read_json(run_dir / "manifest.json")
    mets = artifacts.read_json(run_dir / "metrics.json")
    return TrainResult(name=run_dir.name, run_dir=run_dir, task=mets["task"], classes=mets["classes"],
                       n_patients=man["counts"]["patients"], folds=man["counts"]["folds"],
                       repeats=man["counts"]["repeats"], metrics=M.from_json_safe(mets["pooled"]),
                       per_fold=M.from_json_safe(mets["per_fold"]),
                       skipped=skipped, seconds=float(man.get("seconds", 0.0)))
