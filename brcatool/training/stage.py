"""The train stage: the cross-validation loop, run outputs and finished runs (one fold: ``fold``)."""

from __future__ import annotations

import datetime as _dt
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brcatool import artifacts, config, outputs
from brcatool import metrics as M
from brcatool.artifacts import Manifest, Workdir
from brcatool.cohort import Cohort, load_cohort
from brcatool.devices import torch_device
from brcatool.errors import ArtifactError
from brcatool.splits import (
    Splits,
    check_folds,
    check_training_folds,
    get_splits,
    load_splits,
    save_splits,
    splits_path,
)
from brcatool.training.batching import eligible, oof_probs
from brcatool.training.fold import FoldOutput, is_big, train_fold
from brcatool.training.settings import TrainConfig
from brcatool.training.units import (
    CohortSource,
    FitJob,
    collect,
    fold_dirname,
    fold_indices,
    plan_fits,
    run_fits,
)


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
    left_out: dict[str, int] = field(default_factory=dict)  # slides kept out of the bags, by reason

    def summary(self) -> str:
        m = self.metrics
        fmt = " ".join(f"{k} {m.get(k, math.nan):.3f}" if m.get(k) is not None else f"{k} n/a"
                       for k in M.METRIC_NAMES)
        return (f"{self.name}: {fmt} ({self.folds} folds x {self.repeats}, {self.n_patients} patients, "
                f"{self.seconds:.1f} s) -> {self.run_dir}")



def _oof_table(cohort: Cohort, outs: list[FoldOutput]) -> Any:
    import polars as pl

    frames = []
    for o in outs:
        cols: dict[str, Any] = {
            "patient_id": [cohort.patient_ids[i] for i in o.val_idx],
            "repeat": np.full(len(o.val_idx), o.repeat, dtype=np.int64),
            "fold": np.full(len(o.val_idx), o.fold, dtype=np.int64),
            "target": cohort.for_repeat(o.repeat).targets[o.val_idx],  # a label null: repeat o's labels
        }
        cal = o.probs if o.cal_probs is None else o.cal_probs
        if len(cohort.classes) == 2:
            cols["prob"] = o.probs[:, 1]
            cols["pred"] = (o.probs[:, 1] >= o.threshold).astype(np.int64)
            cols["cal_prob"] = cal[:, 1]
        else:
            for c, name in enumerate(cohort.classes):
                cols[f"prob_{name}"] = o.probs[:, c]
            cols["pred"] = o.probs.argmax(1).astype(np.int64)
            for c, name in enumerate(cohort.classes):
                cols[f"cal_prob_{name}"] = cal[:, c]
        frames.append(pl.DataFrame(cols))
    return pl.concat(frames).sort("repeat", "patient_id")


def _metrics(oof: Any, outs: list[FoldOutput], classes: list[str]) -> dict[str, Any]:
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


def _extends(new: Splits, saved: Splits) -> bool:
    """Whether ``new`` is ``saved`` with more repeats (its first repeats identical)."""
    return (new.repeats > saved.repeats and new.folds == saved.folds and new.patient_ids == saved.patient_ids
            and np.array_equal(new.fold[:saved.repeats], saved.fold))


def calibration_note(cfg: TrainConfig) -> dict[str, str]:
    """What ``cal_prob*`` holds (metrics.json ``calibration``): Brier and calibration use it."""
    if cfg.pos_weight_value() is None:
        return {"probabilities": "model output (no class weighting in the loss)", "method": "none"}
    return {"probabilities": f"model output with the --pos-weight {cfg.pos_weight} class weighting undone "
            "(p_c proportional to q_c / w_c; binary: logit - log pos_weight)", "method": "prior-correction"}


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
                tr, va = fold_indices(cohort, splits, ok, r, k)
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


def _fit_units(wd: Workdir, name: str, cfg: TrainConfig, cohort: Cohort, splits: Splits,
               source: CohortSource | None, threads: int, progress: bool) -> list[FoldOutput]:
    """``--dask``: every fold a task (``training.units``); the records read back in fold order."""
    jobs = plan_fits(wd, name, cfg, cohort, splits, source, threads)
    run_fold_jobs(jobs, str(cfg.dask), progress=progress, label=f"{name}: folds")
    return collect(jobs)


def run_fold_jobs(jobs: list[FitJob], dask: str, *, progress: bool, label: str) -> None:
    """The units without a finished record as Dask tasks, with a bar of finished folds."""
    with _progress(progress) as bar:
        task = bar.add_task(f"{label} (dask {dask})", total=len(jobs), info="")
        run_fits(jobs, dask, on_done=lambda _job: bar.advance(task))


def _resolve_splits(wd: Workdir, cfg: TrainConfig, cohort: Cohort, ok: np.ndarray) -> tuple[Splits, bool]:
    """The saved split for this cohort, or a new one left unsaved (saved once the run succeeded)."""
    check_folds(cohort, cfg.folds, ok, why=f" with the modalities {cfg.fusion!r} needs")
    return get_splits(wd, cohort, folds=cfg.folds, repeats=cfg.repeats, seed=cfg.seed, save=False,
                      by=cfg.split, site_column=cfg.site_column)


def fold_jobs(workdir: Path | Workdir, cfg: TrainConfig, cohort: Cohort, *, splits: Splits | None = None,
              source: CohortSource | None = None) -> list[FitJob]:
    """The Dask units ``run_train(cfg)`` (or ``oof_only``) runs for ``cohort``: ablate submits every
    model's at once, and the runs then find the finished records."""
    import torch

    wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    cohort = cohort.restrict(gene=_uses(cfg)[0], image=_uses(cfg)[1])
    if splits is None:
        splits, _ = _resolve_splits(wd, cfg, cohort, eligible(cohort, cfg.fusion, cfg.missing))
    return plan_fits(wd, str(cfg.name), cfg, cohort, splits, source,
                     _threads(cohort, cfg, torch.get_num_threads()))


def oof_only(cohort: Cohort, splits: Splits, cfg: TrainConfig, *, progress: bool = False,
             workdir: Path | Workdir | None = None, source: CohortSource | None = None) -> Any:
    """Cross-validate on ``cohort`` and return the oof table alone: nothing is written (ablate's
    label-permutation null trains many such models). With ``cfg.dask`` (and ``workdir``, for the
    fold records, removed afterwards) the folds run as Dask tasks."""
    import torch

    cfg.validate()
    kind_cohort = cohort.restrict(gene=_uses(cfg)[0], image=_uses(cfg)[1])
    if cfg.dask and workdir is not None and cfg.name:
        wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
        outs = _fit_units(wd, cfg.name, cfg, kind_cohort, splits, source,
                          _threads(kind_cohort, cfg, torch.get_num_threads()), progress)
        artifacts.remove(wd.train_parts(cfg.name))
        return _oof_table(kind_cohort, outs)
    ok = eligible(kind_cohort, cfg.fusion, cfg.missing)
    threads = torch.get_num_threads()
    torch.set_num_threads(_threads(kind_cohort, cfg, threads))
    try:
        outs = _cross_validate(kind_cohort, splits, ok, cfg, cfg.name or cfg.fusion, torch_device(cfg.device),
                               progress)
    finally:
        torch.set_num_threads(threads)
    return _oof_table(kind_cohort, outs)


def _uses(cfg: TrainConfig) -> tuple[bool, bool]:
    from brcatool.models import FUSIONS

    kind = FUSIONS.get(cfg.fusion)
    return kind.uses_gene, kind.uses_image


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
    if not artifacts.check_params(manifest, cfg.params(), overwrite=cfg.overwrite, what=f"run {name!r}"):
        return False
    outputs.check_fresh(wd, manifest, what=f"run {name!r}", rerun=f"train --name {name} --overwrite")
    return True


def run_train(workdir: Path | Workdir, cfg: TrainConfig, *, progress: bool = True,
              cohort: Cohort | None = None, splits: Splits | None = None,
              source: CohortSource | None = None) -> TrainResult:
    """Cross-validate one model and write ``runs/<name>/``.

    ``cohort``/``splits`` let callers (ablate's sanity checks) pass a modified cohort, e.g. with
    permuted labels, together with the saved split; normally both are loaded from the workdir.
    With ``cfg.dask`` the folds run as Dask tasks; ``source`` says how a worker rebuilds a given
    ``cohort`` from the workdir (without it, a given cohort travels with every task).
    """
    import polars as pl

    from brcatool.models import FUSIONS

    t0 = time.perf_counter()
    wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    cfg.validate()
    kind = FUSIONS.get(cfg.fusion)
    device = torch_device(cfg.device)
    name = cfg.name or _default_name(cfg, wd)
    run_dir = wd.run_dir(name)
    params = cfg.params()
    if is_finished(wd, cfg):
        return load_result(run_dir, skipped=True)

    if cohort is None:
        source = CohortSource.of(wd, cfg, images=kind.uses_image, expression=kind.uses_gene)
        cohort = load_cohort(wd, encoder=cfg.encoder, images=kind.uses_image,
                             expression=kind.uses_gene, progress=progress, **cfg.slide_filter())
    else:  # e.g. ablate's one cohort with both modalities: keep what this fusion uses
        cohort = cohort.restrict(gene=kind.uses_gene, image=kind.uses_image)
    created = False
    ok = eligible(cohort, cfg.fusion, cfg.missing)
    if splits is None:  # a new split is saved only once this run succeeded: a failed first run leaves none
        splits, created = _resolve_splits(wd, cfg, cohort, ok)
    elif splits.patient_ids != cohort.patient_ids:
        raise ArtifactError("the split and the cohort list different patients", path=splits.path)
    if ok.sum() < 2 * splits.folds:
        raise ArtifactError(f"only {int(ok.sum())} patients have the modalities {cfg.fusion!r} needs",
                            path=wd.root, fix="check embed/prep-expr outputs, or try --missing mask")
    check_training_folds(splits, cohort.targets, cohort.classes, ok, why=f" for {cfg.fusion!r}")

    import torch

    threads = torch.get_num_threads()
    if cfg.dask:
        outs = _fit_units(wd, name, cfg, cohort, splits, source, _threads(cohort, cfg, threads), progress)
    else:
        torch.set_num_threads(_threads(cohort, cfg, threads))
        try:
            outs = _cross_validate(cohort, splits, ok, cfg, name, device, progress)
        finally:
            torch.set_num_threads(threads)

    if created:  # a run started alongside may have saved one meanwhile: both must then agree
        path = splits_path(wd, cfg.split)
        with outputs.stage_lock(wd, f"splits-{cfg.split}", wait=60):
            saved = load_splits(path) if path.exists() else None
            if saved is None or _extends(splits, saved):  # new, or more repeats of the saved one
                save_splits(splits, path)
            elif saved.sha256() != splits.sha256():
                raise ArtifactError("was saved by another run while this one trained, with other folds",
                                    path=path, fix="re-run this command: it will use the saved split "
                                    "(or pass the saved --folds/--repeats)")
            else:
                splits.path = path
    oof = _oof_table(cohort, outs)
    mets = {"task": cohort.task, "fusion": cfg.fusion, "aggregator": cfg.aggregator,
            **_metrics(oof, outs, list(cohort.classes)), "calibration": calibration_note(cfg),
            "split": splits.by, "slides_left_out": dict(cohort.left_out)}
    epochs = pl.DataFrame([row for o in outs for row in o.epochs])
    split_ref = {"path": str(splits.path) if splits.path else None, "sha256": splits.sha256(),
                 "cohort_hash": splits.cohort_hash, "folds": splits.folds, "repeats": splits.repeats,
                 "seed": splits.seed, "by": splits.by}
    manifest = Manifest("train", params)
    for path in (wd.labels_table, wd.expression_table if kind.uses_gene else None,
                 wd.recipe_settings if kind.uses_gene else None, splits.path):
        if path is not None:
            manifest.add_input(path)
    used = [outputs.consumed(wd, "prep-expr", wd.stage_manifest("prep-expr"))]
    if kind.uses_image and cohort.encoder:
        enc = cohort.encoder["encoder"]
        manifest.add_input(wd.features_dir(enc) / "manifest.json")
        manifest.add_input(wd.features_index(enc))
        used.append(outputs.consumed(wd, f"embed ({enc})", wd.features_dir(enc) / "manifest.json"))
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
                       device=str(device), seconds=round(seconds, 2), consumed=used,
                       slides_left_out=dict(cohort.left_out),
                       fingerprint=outputs.output_fingerprint(name, files=[tmp / "oof.parquet"]))
    artifacts.remove(wd.train_parts(name))  # the fold records of a --dask run, now in the run
    return TrainResult(name=name, run_dir=run_dir, task=cohort.task, classes=list(cohort.classes),
                       n_patients=int(oof["patient_id"].n_unique()), folds=splits.folds,
                       repeats=splits.repeats, metrics=mets["pooled"], per_fold=mets["per_fold"],
                       splits_created=created, seconds=seconds, left_out=dict(cohort.left_out))


def load_result(run_dir: Path, *, skipped: bool = False) -> TrainResult:
    """A finished run's result from its files (used when a re-run finds it done)."""
    run_dir = Path(run_dir)
    again = f"train --name {run_dir.name} --overwrite"
    man = artifacts.read_json(run_dir / "manifest.json", made_by=again,
                              keys=("counts.patients", "counts.folds", "counts.repeats"))
    mets = artifacts.read_json(run_dir / "metrics.json", keys=("task", "classes", "pooled", "per_fold"),
                               made_by=again)
    return TrainResult(name=run_dir.name, run_dir=run_dir, task=mets["task"], classes=mets["classes"],
                       n_patients=man["counts"]["patients"], folds=man["counts"]["folds"],
                       repeats=man["counts"]["repeats"], metrics=M.from_json_safe(mets["pooled"]),
                       per_fold=M.from_json_safe(mets["per_fold"]),
                       skipped=skipped, seconds=float(man.get("seconds", 0.0)))
