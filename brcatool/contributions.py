"""Per-patch contributions for models that do not weigh patches (mean pooling; concat, late, image).

Method: leave-one-patch-out occlusion of the predicted logit. For a patient's bag of n valid patches
the fold model scores the full bag and the n bags with one patch removed (through the model's own
padding mask, so it sees exactly the bag minus that patch). The score is the logit of the predicted
class: binary models, the logit if the fold model predicts class 1 (its probability reaches the fold
threshold) else minus the logit; multiclass, the logit of the arg-max class. A patch's contribution is
``score(full) - score(without it)``: positive patches push toward the prediction, negative ones
against it. A one-patch bag gets 0 (removing its only patch leaves no image). Averaged over fold
models as attention is (out-of-fold: only the models that held the patient out).

The table has attention's columns (patient_id, slide_id, patch_index, weight) plus ``method``
(``occlusion``), so montages, heatmaps and GeoJSON draw it the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from brcatool import artifacts
from brcatool.artifacts import Workdir
from brcatool.cohort import Cohort, load_cohort

METHOD = "occlusion"


def _scores(logits: Any, threshold: float, pred_of: Any = None) -> tuple[Any, Any]:
    """(score of the predicted class per row, the predicted class) from logits (rows, n_out)."""
    import torch

    logits = logits.float()
    if logits.shape[1] == 1:  # binary: sign by the fold's decision
        pred = (torch.sigmoid(logits[:, 0]) >= threshold).long() if pred_of is None else pred_of
        return torch.where(pred == 1, logits[:, 0], -logits[:, 0]), pred
    pred = logits.argmax(1) if pred_of is None else pred_of
    return logits.gather(1, pred.view(-1, 1).expand(len(logits), 1))[:, 0], pred


def occlude(fm: Any, cohort: Cohort, idx: np.ndarray | None = None, *, device: str = "cpu",
            batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(patient positions, contributions (n, N) padded like the cohort's mask) for one fold model."""
    import torch

    from brcatool.training.batching import Batcher, _forward, eligible

    fm.check(cohort)
    dev = torch.device(device)
    model = fm.model.to(dev).eval()
    ok = eligible(cohort, fm.config["fusion"], fm.missing) & cohort.has_img
    idx = np.flatnonzero(ok) if idx is None else np.asarray(idx)[ok[np.asarray(idx)]]
    batcher = Batcher(cohort, fm.gene_inputs(cohort), gene=fm.uses_gene, image=True, device=dev)
    batcher.amp = False  # differences of logits: keep fp32
    out = np.zeros((len(idx), cohort.mask.shape[1]), dtype=np.float64)
    with torch.no_grad():
        for row, p in enumerate(idx):
            b = batcher.batch(np.array([p]))
            n = int(b["mask"][0].sum())
            if n < 2:
                continue
            full, pred = _scores(_forward(model, b, dev, False)["logits"], fm.threshold)
            masks = b["mask"].expand(n, -1).clone()
            masks[torch.arange(n), torch.arange(n)] = False  # valid patches are left-aligned
            drops = []
            for s in range(0, n, batch_size):
                k = min(batch_size, n - s)
                rep = {key: (v.expand(k, *v.shape[1:]) if v is not None else None) for key, v in b.items()}
                rep["mask"] = masks[s:s + k]
                drops.append(_scores(_forward(model, rep, dev, False)["logits"], fm.threshold,
                                     pred.expand(k))[0])
            out[row, :n] = (full - torch.cat(drops)).double().cpu().numpy()
    return idx, out


def _held_out(run_dir: Path, cohort: Cohort) -> dict[tuple[int, int], np.ndarray]:
    """(repeat, fold) -> positions of the patients that fold held out (from ``oof.parquet``)."""
    oof = artifacts.read_parquet(run_dir / "oof.parquet", schema="oof", made_by="train")
    pos = {p: i for i, p in enumerate(cohort.patient_ids)}
    return {(int(r), int(k)): np.array([pos[p] for p in part["patient_id"].to_list() if p in pos],
                                       dtype=np.int64)
            for (r, k), part in oof.group_by(["repeat", "fold"])}


def contributions(run_dir: str | Path, workdir: str | Path | Workdir | None = None, *, mode: str = "oof",
                  device: str = "cpu") -> Any:
    """The contribution table of a run on a workdir (``oof``: its own; ``ensemble``: any), or None
    when the run's models use no image."""
    import polars as pl

    from brcatool.training.prediction import fold_model_paths, load_fold_model

    run_dir = Path(run_dir)
    models = [load_fold_model(p, device=device) for p in fold_model_paths(run_dir)]
    if not models[0].uses_image:
        return None
    wd = Workdir(run_dir.parent.parent) if workdir is None else (
        workdir if isinstance(workdir, Workdir) else Workdir(workdir))
    cohort = load_cohort(wd, encoder=models[0].encoder.get("encoder"), images=True,  # the slides it saw
                         expression=models[0].uses_gene, **(models[0].slide_filter or {}))
    held = _held_out(run_dir, cohort) if mode == "oof" else {}
    csum, count = np.zeros(cohort.mask.shape), np.zeros(cohort.n)
    for fm in models:
        idx = held.get((fm.repeat, fm.fold), np.zeros(0, dtype=np.int64)) if mode == "oof" else None
        idx, c = occlude(fm, cohort, idx, device=device)
        csum[idx] += c
        count[idx] += 1
    sel = cohort.mask & (count > 0)[:, None]
    p_i, n_i = np.nonzero(sel)
    return pl.DataFrame({
        "patient_id": [cohort.patient_ids[i] for i in p_i],
        "slide_id": [cohort.slide_ids[j] for j in cohort.patch_slide[p_i, n_i]],
        "patch_index": cohort.patch_index[p_i, n_i].astype(np.int64),
        "weight": (csum[p_i, n_i] / count[p_i]).astype(np.float64),
        "method": [METHOD] * len(p_i),
    })
