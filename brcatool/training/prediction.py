"""Prediction with a finished run's saved fold models: loading them, ensemble/OOF predict, attention.

Builds on ``batching`` (tensors, inference, eligibility) like the fold loop; nothing here trains
or writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brcatool import artifacts
from brcatool.artifacts import Workdir
from brcatool.cohort import Cohort, load_cohort
from brcatool.devices import cpu_has_bf16
from brcatool.errors import ArtifactError, InputError
from brcatool.training.batching import Batcher, correct_probs, eligible, infer


@dataclass
class FoldModel:
    """One saved fold: the model plus everything needed to predict alone (recipe, classes, threshold)."""

    model: Any
    config: dict[str, Any]
    recipe: Any
    genes_in: list[str]
    classes: list[str]
    task: str
    threshold: float
    encoder: dict[str, Any]
    missing: str
    repeat: int
    fold: int
    path: Path
    bf16: bool = False
    bag_size: int = 0
    class_log_weight: list[float] | None = None  # the loss's class weighting (undone for calibration)
    slide_filter: dict[str, Any] | None = None  # the slide selection the model was trained with

    @property
    def uses_gene(self) -> bool:
        return bool(self.model.uses_gene)

    @property
    def uses_image(self) -> bool:
        return bool(self.model.uses_image)

    def check(self, cohort: Cohort) -> None:
        """Refuse a cohort with other classes or features from another encoder/weights."""
        if list(cohort.classes) != list(self.classes):
            raise ArtifactError(f"classes {cohort.classes} differ from the model's {self.classes}",
                                path=cohort.root, fix="prepare the cohort with the same --task")
        if self.uses_image:
            mine = {k: self.encoder.get(k) for k in ("encoder", "weights", "dim")}
            theirs = {k: cohort.encoder.get(k) for k in ("encoder", "weights", "dim")}
            if mine != theirs:
                raise ArtifactError(f"features come from {theirs}, the model was trained on {mine}",
                                    path=cohort.root, fix="embed it with the same encoder and weights")

    def gene_inputs(self, cohort: Cohort) -> np.ndarray | None:
        """The model's expression input for every patient (this fold's recipe; zeros where a patient
        has none), or None for models without a gene branch."""
        if not self.uses_gene:
            return None
        expr = np.zeros((cohort.n, len(self.recipe.genes_out)), dtype=np.float32)
        if cohort.has_expr.any():
            expr[cohort.has_expr] = self.recipe.transform(cohort.expression[cohort.has_expr],
                                                          genes=cohort.genes)
        return expr

    def predict(self, cohort: Cohort, idx: np.ndarray | None = None, *, device: Any = "cpu",
                batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(patient positions, probabilities (n, C), attention (n, N) or None) for usable patients."""
        import torch

        self.check(cohort)
        dev = torch.device(device) if isinstance(device, str) else device
        self.model.to(dev)
        ok = eligible(cohort, self.config["fusion"], self.missing)
        idx = np.flatnonzero(ok) if idx is None else np.asarray(idx)[ok[np.asarray(idx)]]
        batcher = Batcher(cohort, self.gene_inputs(cohort), gene=self.uses_gene, image=self.uses_image,
                          device=dev, bag_size=self.bag_size)
        batcher.amp = dev.type == "cuda" or (self.bf16 and cpu_has_bf16())  # as in training
        probs, att = infer(self.model, batcher, idx, len(self.classes), batch_size=batch_size)
        return idx, probs, att


def load_fold_model(path: str | Path, *, device: str = "cpu") -> FoldModel:
    """Load ``fold_<k>/model.pt`` into an eval-mode model with its fitted recipe."""
    import torch

    from brcatool.expression import Recipe
    from brcatool.models import ModelConfig, build_model

    path = Path(path)
    if not path.is_file():
        raise ArtifactError("fold model not found", path=path, fix="run `brcatool train` first")
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure = unreadable file
        raise ArtifactError(f"is not a readable fold model ({exc})", path=path) from None
    if not isinstance(ck, dict) or ck.get("format") != "brcatool-fold-model":
        raise ArtifactError("is not a brcatool fold model", path=path)
    model = build_model(ModelConfig.from_dict(ck["model_config"]))
    model.load_state_dict(ck["state_dict"])
    model.to(device).eval()
    return FoldModel(model=model, config=ck["model_config"],
                     recipe=Recipe.from_dict(ck["recipe"]) if ck.get("recipe") else None,
                     genes_in=ck["genes_in"], classes=ck["classes"], task=ck["task"],
                     threshold=float(ck["threshold"]), encoder=ck["encoder"], missing=ck["missing"],
                     repeat=int(ck["repeat"]), fold=int(ck["fold"]), path=path, bf16=bool(ck.get("bf16")),
                     bag_size=int(ck.get("bag_size", 0)), class_log_weight=ck.get("class_log_weight"),
                     slide_filter=_slide_filter(ck.get("train_config") or {}))


def _slide_filter(train_config: dict[str, Any]) -> dict[str, Any]:
    """``load_cohort``'s slide selection as the fold model was trained (older models: the default)."""
    types = str(train_config.get("slide_types", "DX,TS,BS"))
    return {"slide_types": [t.strip().upper() for t in types.split(",") if t.strip()],
            "keep_all_samples": bool(train_config.get("keep_all_samples", False))}


def fold_model_paths(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    paths = sorted(run_dir.glob("*fold_*/model.pt"))
    if not paths:
        raise ArtifactError("holds no fold models", path=run_dir, fix="run `brcatool train` first")
    return paths


@dataclass
class Predictions:
    """Per-patient predictions (``table``: patient_id, target, prob | prob_<class>, pred,
    cal_prob | cal_prob_<class> (class weighting undone), n_models)
    and per-patch attention (``attention``: patient_id, slide_id, patch_index, weight; or None)."""

    table: Any
    attention: Any
    classes: list[str]
    task: str
    cohort: Cohort


def predict(run_dir: str | Path, workdir: str | Path | Workdir | None = None, *, mode: str = "ensemble",
            attention: bool = True, device: str = "cpu") -> Predictions:
    """Apply a run's fold models (with their fitted recipes) to a prepared workdir.

    ``mode="ensemble"``: every fold model predicts every usable patient; probabilities, thresholds
    and attention are averaged over folds (external cohorts). ``mode="oof"``: each patient only by
    the fold models that held it out (averaged over repeats) — the run's own workdir.
    """
    import polars as pl

    if mode not in ("ensemble", "oof"):
        raise InputError(f"mode must be ensemble or oof, got {mode!r}")
    run_dir = Path(run_dir)
    models = [load_fold_model(p, device=device) for p in fold_model_paths(run_dir)]
    m0 = models[0]
    wd = Workdir(run_dir.parent.parent) if workdir is None else (
        workdir if isinstance(workdir, Workdir) else Workdir(workdir))
    cohort = load_cohort(wd, encoder=m0.encoder.get("encoder") if m0.uses_image else None,
                         images=m0.uses_image, expression=m0.uses_gene, **(m0.slide_filter or {}))
    C, P = len(m0.classes), cohort.n
    held: dict[tuple[int, int], np.ndarray] = {}
    if mode == "oof":
        oof = artifacts.read_parquet(run_dir / "oof.parquet", schema="oof", made_by="train")
        pos = {p: i for i, p in enumerate(cohort.patient_ids)}
        for (r, k), part in oof.group_by(["repeat", "fold"]):
            held[(int(r), int(k))] = np.array([pos[p] for p in part["patient_id"].to_list() if p in pos],
                                              dtype=np.int64)
    psum, csum, tsum, count = np.zeros((P, C)), np.zeros((P, C)), np.zeros(P), np.zeros(P)
    asum = np.zeros(cohort.mask.shape) if attention and m0.uses_image else None
    for fm in models:
        idx = held.get((fm.repeat, fm.fold), np.zeros(0, dtype=np.int64)) if mode == "oof" else None
        idx, probs, att = fm.predict(cohort, idx, device=device)
        psum[idx] += probs
        csum[idx] += correct_probs(probs, fm.class_log_weight or np.zeros(C))
        tsum[idx] += fm.threshold
        count[idx] += 1
        if asum is not None and att is not None:
            asum[idx] += att
    have = np.flatnonzero(count > 0)
    probs = psum[have] / count[have, None]
    cols: dict[str, Any] = {"patient_id": [cohort.patient_ids[i] for i in have],
                            "target": cohort.targets[have]}
    if C == 2:
        cols["prob"] = probs[:, 1]
        cols["pred"] = (probs[:, 1] >= tsum[have] / count[have]).astype(np.int64)
    else:
        for c, name in enumerate(m0.classes):
            cols[f"prob_{name}"] = probs[:, c]
        cols["pred"] = probs.argmax(1).astype(np.int64)
    cal = csum[have] / count[have, None]
    if C == 2:
        cols["cal_prob"] = cal[:, 1]
    else:
        for c, name in enumerate(m0.classes):
            cols[f"cal_prob_{name}"] = cal[:, c]
    cols["n_models"] = count[have].astype(np.int64)
    att_table = None
    if asum is not None:
        sel = np.zeros_like(cohort.mask)
        sel[have] = cohort.mask[have]
        sel &= cohort.has_img[:, None]
        p_i, n_i = np.nonzero(sel)
        att_table = pl.DataFrame({
            "patient_id": [cohort.patient_ids[i] for i in p_i],
            "slide_id": [cohort.slide_ids[j] for j in cohort.patch_slide[p_i, n_i]],
            "patch_index": cohort.patch_index[p_i, n_i].astype(np.int64),
            "weight": (asum[p_i, n_i] / count[p_i]).astype(np.float64),
        })
    return Predictions(table=pl.DataFrame(cols), attention=att_table, classes=list(m0.classes),
                       task=m0.task, cohort=cohort)
