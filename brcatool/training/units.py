"""One (model, repeat, fold) fit as a unit of work, so ``train``/``ablate --dask`` can farm folds out.

A unit (``FitJob``) reads artifacts (the workdir's cohort, reloaded once per worker process, or a
cohort shipped with the job; the split travels with it, a few KB), fits the fold with
``train_fold`` under the torch thread count the serial path uses, and leaves a record in the
run's parts folder (``.train-parts/<run>/<fold_dirname>/``: ``model.pt``, ``fold.npz``,
``record.json``), written under a temporary name and renamed, so a Dask worker on shared
storage can run it and a killed run resumes from the finished folds. The parent
(``training.stage``) reads the records back into ``FoldOutput``s and writes the run exactly as
the serial path does; the record's ``key`` (parameters, split, cohort source, fold) keeps a
stale record from being reused.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brcatool import artifacts, outputs
from brcatool import metrics as M
from brcatool.artifacts import Workdir
from brcatool.cohort import Cohort
from brcatool.errors import ArtifactError, BrcaError
from brcatool.executors import RunOptions, make_executor
from brcatool.splits import Splits
from brcatool.training.batching import eligible
from brcatool.training.fold import FoldOutput, train_fold
from brcatool.training.settings import TrainConfig

VARIANTS = ("permuted-labels", "shuffled-images")


def fold_dirname(repeat: int, fold: int, repeats: int = 1) -> str:
    """``fold_<k>``; with several repeats ``repeat_<r>_fold_<k>``."""
    return f"fold_{fold}" if repeats == 1 else f"repeat_{repeat}_fold_{fold}"


def fold_indices(cohort: Cohort, splits: Splits, ok: np.ndarray, repeat: int,
                 fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) positions of one fold among the eligible patients; one line when unusable."""
    tr, va = splits.indices(repeat, fold)
    tr, va = tr[ok[tr]], va[ok[va]]
    if len(va) == 0 or len(np.unique(cohort.targets[tr])) < 2:
        raise ArtifactError(f"fold {fold} (repeat {repeat}) has no usable patients after dropping "
                            "missing modalities", path=splits.path, fix="use fewer --folds or --missing mask")
    return tr, va


# --------------------------------------------------------------------------- where a unit's cohort comes from
@dataclass(frozen=True)
class CohortSource:
    """How a worker rebuilds the parent's cohort from the workdir: ``load_cohort`` with these
    arguments, restricted to the fusion's modalities, then the sanity ``variant`` if any
    (``("permuted-labels", seed)`` or ``("shuffled-images", seed)``, the latter within the folds)."""

    workdir: Path
    encoder: str | None
    images: bool
    expression: bool
    slide_types: tuple[str, ...]
    keep_all_samples: bool
    variant: tuple[str, int] | None = None

    @classmethod
    def of(cls, wd: Workdir, cfg: TrainConfig, *, images: bool, expression: bool,
           variant: tuple[str, int] | None = None) -> CohortSource:
        return cls(Path(wd.root), cfg.encoder, images, expression, tuple(cfg.slide_type_list()),
                   cfg.keep_all_samples, variant)

    def describe(self) -> dict[str, Any]:
        return {"encoder": self.encoder, "images": self.images, "expression": self.expression,
                "slide_types": list(self.slide_types), "keep_all_samples": self.keep_all_samples,
                "variant": list(self.variant) if self.variant else None,
                "inputs": _inputs_stamp(self.workdir)}

    def build(self, cfg: TrainConfig, splits: Splits) -> Cohort:
        from brcatool.cohort import load_cohort
        from brcatool.models import FUSIONS

        key = (self, json.dumps(self.describe()["inputs"]))
        if _LOADED.get("key") != key:  # one cohort per worker process: the folds of a run share it
            _LOADED.clear()
            _LOADED.update(key=key, cohort=load_cohort(
                self.workdir, encoder=self.encoder, images=self.images, expression=self.expression,
                slide_types=list(self.slide_types), keep_all_samples=self.keep_all_samples))
        kind = FUSIONS.get(cfg.fusion)
        cohort = _LOADED["cohort"].restrict(gene=kind.uses_gene, image=kind.uses_image)
        return with_variant(cohort, self.variant, splits, cfg.missing)


_LOADED: dict[str, Any] = {}


def with_variant(cohort: Cohort, variant: tuple[str, int] | None, splits: Splits,
                 missing: str = "drop") -> Cohort:
    """``cohort`` (restricted to a fusion's modalities) as a sanity check uses it, drawn per repeat
    of ``splits``: labels permuted within each validation fold among the patients the fusion can
    use under ``missing`` (every fold keeps its class counts), or image bags shuffled within folds."""
    if variant is None:
        return cohort
    what, seed = variant
    if what == "permuted-labels":
        gene, image = bool(cohort.genes), cohort.features is not None
        among = (cohort.has_expr | cohort.has_img if missing == "mask" and gene and image
                 else cohort.available(gene=gene, image=image))
        return cohort.with_permuted_labels(seed, groups=splits.fold.T, among=among)
    return cohort.with_shuffled_images(seed, groups=splits.fold.T)


def _inputs_stamp(root: Path) -> list[list[Any]]:
    """(name, size, mtime) of the tables and feature indexes a cohort is read from."""
    wd = Workdir(root)
    paths = [wd.labels_table, wd.expression_table, wd.recipe_settings,
             *sorted(wd.root.glob("features/*/index.parquet"))]
    return [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in paths if p.is_file()]


# --------------------------------------------------------------------------- the unit
@dataclass(frozen=True)
class FitJob:
    """One fold of one run: everything a worker needs (picklable)."""

    run: str
    cfg: TrainConfig
    repeat: int
    fold: int
    splits: Splits
    source: CohortSource | Cohort  # a Cohort travels with the job (a cohort built in Python)
    parts: Path  # this run's parts folder
    threads: int  # torch threads: the serial path's count, so the numbers are the same
    key: str

    @property
    def record_dir(self) -> Path:
        return self.parts / fold_dirname(self.repeat, self.fold, self.splits.repeats)


def plan_fits(wd: Workdir, run: str, cfg: TrainConfig, cohort: Cohort, splits: Splits,
              source: CohortSource | None, threads: int) -> list[FitJob]:
    """The units of one run, every fold checked usable here (one line before anything starts)."""
    ok = eligible(cohort, cfg.fusion, cfg.missing)
    for r in range(splits.repeats):
        for k in range(splits.folds):
            fold_indices(cohort, splits, ok, r, k)
    described = source.describe() if source is not None else {"given": uuid.uuid4().hex}  # never reused
    base = {"params": cfg.params(), "split": splits.sha256(), "source": described}
    parts = wd.train_parts(run)
    return [FitJob(run, cfg, r, k, splits, source if source is not None else cohort, parts, threads,
                   outputs.params_digest({**base, "repeat": r, "fold": k}))
            for r in range(splits.repeats) for k in range(splits.folds)]


def fit_unit(job: FitJob) -> dict[str, Any]:
    """Fit one fold and leave its record; returns a short summary (the parent reads the record)."""
    import torch

    cohort = job.source if isinstance(job.source, Cohort) else job.source.build(job.cfg, job.splits)
    ok = eligible(cohort, job.cfg.fusion, job.cfg.missing)
    tr, va = fold_indices(cohort, job.splits, ok, job.repeat, job.fold)
    before = torch.get_num_threads()
    torch.set_num_threads(job.threads)
    try:
        out = train_fold(cohort, tr, va, job.cfg, repeat=job.repeat, fold=job.fold)
    finally:
        torch.set_num_threads(before)
    write_record(job, out)
    return {"run": job.run, "repeat": job.repeat, "fold": job.fold, "best_epoch": out.best_epoch}


def write_record(job: FitJob, out: FoldOutput) -> None:
    import torch

    with artifacts.atomic_path(job.record_dir) as tmp:
        tmp.mkdir(parents=True)
        torch.save(out.checkpoint, tmp / "model.pt")
        arrays = {"val_idx": out.val_idx, "probs": out.probs}
        if out.cal_probs is not None:
            arrays["cal_probs"] = out.cal_probs
        np.savez(tmp / "fold.npz", **arrays)
        artifacts.write_json(tmp / "record.json", M.json_safe(
            {"key": job.key, "repeat": out.repeat, "fold": out.fold, "threshold": out.threshold,
             "best_epoch": out.best_epoch, "epochs": out.epochs}))


def read_record(job: FitJob) -> FoldOutput | None:
    """The unit's finished record, or None (missing, unreadable, or made with other inputs)."""
    import torch

    d = job.record_dir
    try:
        rec = M.from_json_safe(json.loads((d / "record.json").read_text()))
        if rec.get("key") != job.key:
            return None
        with np.load(d / "fold.npz") as z:
            arrays = {k: z[k] for k in z.files}
        ckpt = torch.load(d / "model.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, KeyError, RuntimeError):
        return None
    return FoldOutput(repeat=int(rec["repeat"]), fold=int(rec["fold"]), val_idx=arrays["val_idx"],
                      probs=arrays["probs"], threshold=float(rec["threshold"]),
                      best_epoch=int(rec["best_epoch"]), epochs=rec["epochs"], checkpoint=ckpt,
                      cal_probs=arrays.get("cal_probs"))


def run_fits(jobs: list[FitJob], dask: str, *, on_done: Callable[[FitJob], None] | None = None) -> None:
    """Run the units without a finished record as Dask tasks (no cluster when none is left).

    Every unit runs to the end; the first failure is then raised (a ``BrcaError`` as it is), so
    the folds that finished are kept for a re-run.
    """
    todo = [job for job in jobs if read_record(job) is None]
    for job in jobs:
        if on_done is not None and job not in todo:
            on_done(job)
    if not todo:
        return
    errors: list[BaseException] = []
    with make_executor(RunOptions(dask=dask)) as ex:
        for (job,), res in ex.map(fit_unit, [(j,) for j in todo], lambda _job, exc: errors.append(exc)):
            if res is not None and on_done is not None:
                on_done(job)
    if errors:
        exc = errors[0]
        if isinstance(exc, BrcaError):
            raise exc
        raise ArtifactError(f"a fold failed on a Dask worker: {type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:300]}", path=jobs[0].parts,
                            fix="re-run the same command (finished folds are kept); "
                                "BRCATOOL_DEBUG=1 shows more") from exc


def collect(jobs: list[FitJob]) -> list[FoldOutput]:
    """Every unit's record, in (repeat, fold) order, as the serial loop returns them."""
    outs = []
    for job in jobs:
        out = read_record(job)
        if out is None:
            raise ArtifactError(f"fold {job.fold} (repeat {job.repeat}) of run {job.run!r} left no record",
                                path=job.record_dir, fix="re-run the same command")
        outs.append(out)
    return outs
