"""The evaluate stage: metrics with uncertainty, plots and patch-weight exports of a finished run.

Out-of-fold (default): every patient is scored by the fold model that never saw it. Metrics are
per fold (mean ± sd), pooled (mean over repeats, as ``train`` reports) and given a patient-level
bootstrap 95 % CI. External (``on=OTHER_WORKDIR``): the fold models, each with the expression
recipe fitted on its own training fold, predict the other cohort; probabilities are averaged
(ensemble) and every fold model is also scored alone (mean ± sd).

Outputs (OOF) in ``runs/<name>/eval/``: ``metrics.json`` (everything), ``plots/*.png``,
``attention.parquet``, ``topk/<patient>.png``, ``heatmaps/<slide>.png``, ``config.yaml`` and
``manifest.json``; a summary is also added to the run's own ``metrics.json`` under ``evaluation``.
External outputs go to ``runs/<name>/external/<other-workdir-name>/`` (plus ``predictions.parquet``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brcatool import artifacts, config, outputs
from brcatool import metrics as M
from brcatool.artifacts import Manifest, Workdir
from brcatool.errors import ArtifactError, InputError
from brcatool.names import file_name


@dataclass
class EvaluateConfig:
    """Options of ``brcatool evaluate`` (defaults = the CLI's)."""

    run: str | None = None  # run name under runs/; None = the latest finished run
    on: str | None = None  # another prepared workdir: external evaluation
    bootstrap: int = 1000  # patient-level bootstrap resamples for the 95 % CI (0 = none)
    top_k: int = 8  # patches per patient in the top-k montage (0 = no montages)
    heatmaps: bool = False  # patch weights on slide thumbnails
    plots: bool = True
    attention: bool = True  # export patch weights (attention; occlusion for models without it)
    geojson: bool = False  # QuPath GeoJSON per slide: patch weights as tiles + the prediction
    device: str = "cpu"
    seed: int = 0
    overwrite: bool = False

    def validate(self) -> None:
        if self.bootstrap < 0 or self.top_k < 0:
            raise InputError("--bootstrap and --top-k must be >= 0")

    def params(self) -> dict[str, Any]:
        d = config.to_dict(self)
        for k in ("device", "overwrite"):
            d.pop(k)
        if self.on is not None:
            d["on"] = str(Path(self.on).resolve())
        return d


@dataclass
class EvaluateResult:
    run: str
    run_dir: Path
    out_dir: Path
    scope: str  # "oof" or "external:<name>"
    task: str
    classes: list[str]
    n_patients: int
    pooled: dict[str, float]
    fold_mean: dict[str, float]
    fold_sd: dict[str, float]
    ci: dict[str, tuple[float, float]]
    per_fold: list[dict[str, Any]] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    attention: Path | None = None
    montages: int = 0
    heatmaps: int = 0
    notes: list[str] = field(default_factory=list)
    bootstrap: int = 0
    skipped: bool = False
    seconds: float = 0.0
    calibration: dict[str, str] = field(default_factory=dict)  # which probabilities Brier describes

    def rows(self) -> list[tuple[str, float, float, float, float, float]]:
        """(metric, pooled, fold mean, fold sd, CI low, CI high) per metric, for tables."""
        return [(k, self.pooled.get(k, math.nan), self.fold_mean.get(k, math.nan),
                 self.fold_sd.get(k, math.nan), *self.ci.get(k, (math.nan, math.nan)))
                for k in M.EVAL_METRIC_NAMES]

    def to_json(self) -> dict[str, Any]:
        return M.json_safe({
            "run": self.run, "scope": self.scope, "task": self.task, "classes": self.classes,
            "n_patients": self.n_patients, "pooled": self.pooled, "fold_mean": self.fold_mean,
            "fold_sd": self.fold_sd, "ci95": {k: list(v) for k, v in self.ci.items()},
            "bootstrap": self.bootstrap, "per_fold": self.per_fold,
            "plots": [p.name for p in self.plots],
            "attention": self.attention.name if self.attention else None,
            "montages": self.montages, "heatmaps": self.heatmaps, "notes": self.notes,
            "calibration": self.calibration, "seconds": round(self.seconds, 2),
        })


# --------------------------------------------------------------------------- finding runs
def resolve_run(wd: Workdir, name: str | None) -> Path:
    """``runs/<name>`` (finished), or the most recently finished run when ``name`` is None."""
    if name:
        run_dir = wd.run_dir(name)
        if not (run_dir / "manifest.json").is_file():
            have = finished_runs(wd)
            raise ArtifactError(f"no finished run named {name!r}", path=run_dir,
                                fix=(f"use one of: {', '.join(p.name for p in have[-8:])}" if have
                                     else f"run `brcatool train -w {wd.root}` first"))
        return run_dir
    runs = finished_runs(wd)
    if not runs:
        raise ArtifactError("holds no finished runs", path=wd.runs_dir,
                            fix=f"run `brcatool train -w {wd.root}` first")
    return runs[-1]


def finished_runs(wd: Workdir) -> list[Path]:
    """Runs with a manifest, oldest first."""
    if not wd.runs_dir.is_dir():
        return []
    runs = [p for p in wd.runs_dir.iterdir()
            if (p / "manifest.json").is_file() and not p.name.startswith(".")]
    return sorted(runs, key=lambda p: ((p / "manifest.json").stat().st_mtime, p.name))


def _run_info(run_dir: Path) -> dict[str, Any]:
    mets = artifacts.read_json(run_dir / "metrics.json", keys=("classes",),
                               made_by=f"train --name {run_dir.name} --overwrite")
    cfg = config.load_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else {}
    fusion = str(mets.get("fusion", cfg.get("fusion", "")))
    aggregator = str(mets.get("aggregator", cfg.get("aggregator", "")))
    weighs = fusion == "xattn" or (fusion != "gene" and aggregator == "abmil")
    return {"task": str(mets.get("task", "")), "classes": list(mets["classes"]), "fusion": fusion,
            "aggregator": aggregator, "has_attention": weighs,
            # which probabilities Brier and the calibration curve describe (train's record)
            "calibration": mets.get("calibration") or {"probabilities": "model output", "method": "none"}}


def _run_encoders(run_dir: Path) -> list[str]:
    enc = artifacts.read_json(run_dir / "manifest.json").get("encoder") or {}
    return [str(enc["encoder"])] if isinstance(enc, dict) and enc.get("encoder") else []


def _refuse_overlap(run_dir: Path, other: Workdir) -> None:
    """An external cohort must not hold patients the run was trained on (its metrics would be
    in-sample): refuse with the count."""
    trained = set(artifacts.read_parquet(run_dir / "oof.parquet", schema="oof", made_by="train")
                  ["patient_id"].cast(str).to_list())
    external = set(artifacts.read_parquet(other.labels_table, schema="labels", made_by="prep-expr")
                   ["patient_id"].cast(str).to_list())
    shared = sorted(trained & external)
    if shared:
        raise InputError(
            f"{len(shared)} of its {len(external)} patients were in the training cohort of run "
            f"{run_dir.name!r} (e.g. {', '.join(shared[:3])}): 'external' metrics would be in-sample",
            path=other.root, fix="evaluate on a cohort without those patients (the out-of-fold "
            "metrics of `brcatool evaluate` without --on already score every training patient)")


# --------------------------------------------------------------------------- metrics
def fold_metrics(oof: Any, classes: list[str]) -> list[dict[str, Any]]:
    """``eval_metrics`` of every (repeat, fold) of an oof table (Brier: ``calibration_probs``)."""
    from brcatool.training import calibration_probs, oof_probs

    out = []
    for (r, k), part in sorted(oof.group_by(["repeat", "fold"]), key=lambda g: g[0]):
        m = M.eval_metrics(part["target"].to_numpy(), oof_probs(part, classes), pred=part["pred"].to_numpy(),
                           calibrated=calibration_probs(part, classes))
        out.append({"repeat": int(r), "fold": int(k), "n": part.height, **m})
    return out


def summarise(per_fold: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sd (ddof 1) over folds of every metric."""
    mean, sd = {}, {}
    for k in M.EVAL_METRIC_NAMES:
        v = np.array([f[k] for f in per_fold], dtype=np.float64)
        v = v[np.isfinite(v)]
        mean[k] = float(v.mean()) if v.size else math.nan
        sd[k] = float(v.std(ddof=1)) if v.size > 1 else math.nan
    return mean, sd


def pooled_metrics(oof: Any, classes: list[str]) -> dict[str, float]:
    """Metrics of all out-of-fold rows of each repeat, averaged over repeats."""
    from brcatool.training import calibration_probs, oof_probs

    rows = [M.eval_metrics(part["target"].to_numpy(), oof_probs(part, classes), pred=part["pred"].to_numpy(),
                           calibrated=calibration_probs(part, classes))
            for _, part in sorted(oof.group_by("repeat"), key=lambda g: g[0])]
    return {k: float(np.nanmean([r[k] for r in rows])) if any(np.isfinite(r[k]) for r in rows) else math.nan
            for k in M.EVAL_METRIC_NAMES}


def repeat_parts(oof: Any, patients: list[str], classes: list[str]) -> list[tuple[np.ndarray, ...]]:
    """Per repeat of an oof table (one part without a ``repeat`` column): (positions of its rows in
    ``patients``, y, probs, pred, calibrated) -- the input of ``metrics.resampled_pooled``."""
    import polars as pl

    from brcatool.training import calibration_probs, oof_probs

    pos = {p: i for i, p in enumerate(patients)}
    groups = (sorted(oof.group_by("repeat"), key=lambda g: g[0]) if "repeat" in oof.columns
              else [((0,), oof)])
    out = []
    for _, part in groups:
        part = part.with_columns(pl.col("patient_id").cast(pl.String))
        idx = np.array([pos[p] for p in part["patient_id"].to_list()], dtype=np.int64)
        out.append((idx, part["target"].to_numpy(), oof_probs(part, classes), part["pred"].to_numpy(),
                    calibration_probs(part, classes)))
    return out


def oof_ci(table: Any, classes: list[str], n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    """Patient-level bootstrap 95 % CI of every pooled metric of an oof table: the same patient
    weights for every repeat, then the mean over repeats (the estimator ``pooled_metrics`` uses)."""
    patients = sorted(set(table["patient_id"].cast(str).to_list()))
    return M.resampled_pooled([(1.0, repeat_parts(table, patients, classes))], len(patients),
                              n_boot=n_boot, seed=seed)


def _curves(table: Any, classes: list[str], out: Path, label: str) -> list[Path]:
    from brcatool import plots
    from brcatool.training import calibration_probs, oof_probs

    y, probs, pred = table["target"].to_numpy(), oof_probs(table, classes), table["pred"].to_numpy()
    cal = calibration_probs(table, classes)
    return [plots.pr_curve(y, probs, classes, out / "pr_curve.png", title=f"Precision-recall: {label}"),
            plots.roc_curve(y, probs, classes, out / "roc_curve.png", title=f"ROC: {label}"),
            plots.confusion(y, pred, classes, out / "confusion.png", title=f"Confusion: {label}"),
            plots.calibration(y, cal, classes, out / "calibration.png", title=f"Calibration: {label}")]


# --------------------------------------------------------------------------- the stage
# outputs beyond the metrics: an evaluation that made them (or more) has the same numbers
_EXTRAS = ("plots", "attention", "heatmaps", "top_k", "geojson")


def _covers(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether an evaluation made with ``old`` params holds all that one with ``new`` would:
    identical metric settings, and every figure/export ``new`` asks for made the same way."""
    if any(old.get(k) != new.get(k) for k in set(old) | set(new) if k not in _EXTRAS):
        return False
    if new.get("top_k") != old.get("top_k") and new.get("attention"):
        return False
    return all(old.get(k) or not new.get(k) for k in ("plots", "attention", "heatmaps", "geojson"))


def run_evaluate(workdir: Path | Workdir, cfg: EvaluateConfig, *, progress: bool = True,
                 reuse_covering: bool = False) -> EvaluateResult:
    """Evaluate a run out-of-fold, or on another workdir with ``cfg.on``; see the module doc.

    ``reuse_covering`` (ablate) also reuses an evaluation made with other figure settings when it
    has the same metrics and at least the figures asked for (e.g. the demo's, with heatmaps).
    """
    t0 = time.perf_counter()
    wd = workdir if isinstance(workdir, Workdir) else Workdir(Path(workdir))
    cfg.validate()
    run_dir = resolve_run(wd, cfg.run)
    info = _run_info(run_dir)
    other = None
    if cfg.on is not None:
        other = Workdir(Path(cfg.on))
        other.require(other.labels_table, made_by="prep-expr")
        out_dir = run_dir / "external" / file_name(Path(cfg.on).resolve().name or "root")
        _refuse_overlap(run_dir, other)
    else:
        out_dir = run_dir / "eval"
        # the run and the features it read must still be what the workdir holds (attention rows
        # index today's patch table)
        outputs.check_fresh(wd, run_dir / "manifest.json", what=f"run {run_dir.name!r}",
                            rerun=f"train --name {run_dir.name} --overwrite")
        for enc in _run_encoders(run_dir):
            outputs.check_fresh(wd, wd.features_dir(enc) / "manifest.json",
                                what=f"features of encoder {enc!r}",
                                rerun=f"embed --encoder {enc} --overwrite")
    params = {**cfg.params(), "run": run_dir.name}
    manifest = Manifest("evaluate", params)
    from brcatool.training import fold_model_paths

    inputs = [run_dir / "oof.parquet", *fold_model_paths(run_dir)]
    if other is not None:
        inputs += [other.labels_table, other.expression_table,
                   *sorted((other.root / "features").glob("*/index.parquet"))]
    for p in inputs:
        if p.exists():
            manifest.add_input(p)
    man_path = out_dir / "manifest.json"
    if (reuse_covering and not cfg.overwrite and man_path.is_file()
            and _covers(artifacts.read_json(man_path).get("params", {}), artifacts.normalise(params))):
        old = artifacts.read_json(man_path)
        if old.get("inputs") == manifest.inputs and (out_dir / "metrics.json").is_file():
            return load_result(run_dir, out_dir)
    if artifacts.check_params(man_path, params, overwrite=cfg.overwrite,
                              what=f"evaluation of {run_dir.name!r}"):
        old = artifacts.read_json(out_dir / "manifest.json")
        if old.get("inputs") == manifest.inputs and (out_dir / "metrics.json").is_file():
            return load_result(run_dir, out_dir)
    # the run was re-trained (inputs changed) or nothing exists yet: (re)compute, into a folder
    # beside the old evaluation that replaces it only once complete (a failure keeps the old one)
    with outputs.replacing(wd, [out_dir], tag="evaluate") as staged:
        new_dir = staged.at(out_dir)
        if other is None:
            res = _evaluate_oof(wd, run_dir, new_dir, info, cfg, progress)
        else:
            res = _evaluate_external(other, run_dir, new_dir, info, cfg, progress)
        res.seconds = time.perf_counter() - t0
        res.calibration = info["calibration"]
        res.notes = [n.replace(str(new_dir), str(out_dir)) for n in res.notes]  # where it will be
        artifacts.write_json(new_dir / "metrics.json", res.to_json())
        config.write_yaml(cfg, new_dir / "config.yaml")
        manifest.write(new_dir / "manifest.json", counts={"patients": res.n_patients, "plots": len(res.plots),
                                                          "montages": res.montages, "heatmaps": res.heatmaps},
                       seconds=round(res.seconds, 2))
    res.out_dir = out_dir
    res.plots = [out_dir / p.relative_to(new_dir) for p in res.plots]
    res.attention = out_dir / res.attention.relative_to(new_dir) if res.attention else None
    if other is None:  # a summary beside train's metrics, so one file holds a run's numbers
        mets = artifacts.read_json(run_dir / "metrics.json")
        mets["evaluation"] = {k: v for k, v in res.to_json().items()
                              if k in ("pooled", "fold_mean", "fold_sd", "ci95", "bootstrap", "calibration")}
        mets["evaluation"]["details"] = str(out_dir.relative_to(run_dir) / "metrics.json")
        artifacts.write_json(run_dir / "metrics.json", mets)
    return res


_EVAL_KEYS = ("scope", "task", "classes", "n_patients", "pooled", "fold_mean", "fold_sd", "ci95",
              "per_fold", "plots", "montages", "heatmaps", "notes", "bootstrap")


def load_result(run_dir: Path, out_dir: Path) -> EvaluateResult:
    """A finished evaluation from its ``metrics.json`` (re-runs with the same params skip)."""
    d = artifacts.read_json(out_dir / "metrics.json", keys=_EVAL_KEYS,
                            made_by=f"evaluate --run {run_dir.name} --overwrite")

    def nan(m: dict[str, Any]) -> dict[str, float]:
        return {k: float(v) for k, v in M.from_json_safe(m).items()}

    att = out_dir / "attention.parquet"
    return EvaluateResult(
        run=run_dir.name, run_dir=run_dir, out_dir=out_dir, scope=d["scope"], task=d["task"],
        classes=d["classes"], n_patients=d["n_patients"], pooled=nan(d["pooled"]),
        fold_mean=nan(d["fold_mean"]), fold_sd=nan(d["fold_sd"]),
        ci={k: tuple(float(x) for x in v) for k, v in M.from_json_safe(d["ci95"]).items()},
        per_fold=M.from_json_safe(d["per_fold"]),
        plots=[out_dir / "plots" / p for p in d["plots"]],
        attention=att if att.is_file() else None, montages=d["montages"], heatmaps=d["heatmaps"],
        notes=d["notes"], bootstrap=d["bootstrap"], skipped=True, seconds=float(d.get("seconds", 0.0)))


def _evaluate_oof(wd: Workdir, run_dir: Path, out_dir: Path, info: dict[str, Any], cfg: EvaluateConfig,
                  progress: bool) -> EvaluateResult:
    import polars as pl

    classes = info["classes"]
    oof = artifacts.read_parquet(run_dir / "oof.parquet", schema="oof", made_by=f"train -w {wd.root}")
    per_fold = fold_metrics(oof, classes)
    mean, sd = summarise(per_fold)
    res = EvaluateResult(run=run_dir.name, run_dir=run_dir, out_dir=out_dir, scope="oof", task=info["task"],
                         classes=classes, n_patients=int(oof["patient_id"].n_unique()),
                         pooled=pooled_metrics(oof, classes), fold_mean=mean, fold_sd=sd,
                         ci=oof_ci(oof, classes, cfg.bootstrap, cfg.seed), per_fold=per_fold,
                         bootstrap=cfg.bootstrap)
    if cfg.plots:
        first = oof.filter(pl.col("repeat") == oof["repeat"].min())
        res.plots = _curves(first, classes, out_dir / "plots", run_dir.name)
        if (run_dir / "epochs.csv").is_file():
            from brcatool import plots

            res.plots.append(plots.training_curves(pl.read_csv(run_dir / "epochs.csv"),
                                                   out_dir / "plots" / "training_curves.png",
                                                   title=f"Training: {run_dir.name}"))
    if cfg.attention and info["has_attention"]:
        from brcatool.training import predict

        preds = predict(run_dir, wd, mode="oof", attention=True, device=cfg.device)
        _export_attention(wd, _with_method(preds.attention), out_dir, cfg, res, progress, oof)
    elif cfg.attention and info["fusion"] != "gene":
        from brcatool.contributions import contributions

        _export_attention(wd, contributions(run_dir, wd, mode="oof", device=cfg.device), out_dir, cfg, res,
                          progress, oof)
        res.notes.append(f"patch weights: leave-one-patch-out occlusion of the predicted logit "
                         f"({info['fusion']}/{info['aggregator']} does not weigh patches)")
    elif cfg.attention:
        res.notes.append("no patch weights: a gene-only model uses no patches")
    return res


def _evaluate_external(other: Workdir, run_dir: Path, out_dir: Path, info: dict[str, Any],
                       cfg: EvaluateConfig, progress: bool) -> EvaluateResult:
    import polars as pl

    from brcatool.training import fold_model_paths, load_fold_model, predict

    classes = info["classes"]
    preds = predict(run_dir, other, mode="ensemble", attention=cfg.attention and info["has_attention"],
                    device=cfg.device)
    table = preds.table
    if table.height == 0:
        raise ArtifactError("has no patients with the modalities the run's models need", path=other.root)
    from brcatool.training import calibration_probs, correct_probs, oof_probs

    # Brier on the probabilities with the loss's class weighting undone, as the CI and the oof metrics
    pooled = M.eval_metrics(table["target"].to_numpy(), oof_probs(table, classes),
                            pred=table["pred"].to_numpy(), calibrated=calibration_probs(table, classes))
    per_fold = []
    for path in fold_model_paths(run_dir):  # each fold model alone on the external cohort
        fm = load_fold_model(path, device=cfg.device)
        idx, probs, _ = fm.predict(preds.cohort, device=cfg.device)
        m = M.eval_metrics(preds.cohort.targets[idx], probs, threshold=fm.threshold,
                           calibrated=correct_probs(probs, fm.class_log_weight or np.zeros(len(classes))))
        per_fold.append({"repeat": fm.repeat, "fold": fm.fold, "n": len(idx), **m})
    mean, sd = summarise(per_fold)
    res = EvaluateResult(run=run_dir.name, run_dir=run_dir, out_dir=out_dir,
                         scope=f"external:{out_dir.name}", task=info["task"], classes=classes,
                         n_patients=table.height, pooled=pooled, fold_mean=mean, fold_sd=sd,
                         ci=oof_ci(table, classes, cfg.bootstrap, cfg.seed), per_fold=per_fold,
                         bootstrap=cfg.bootstrap)
    stored = table.with_columns(pl.lit(0, pl.Int64).alias("repeat"), pl.lit(-1, pl.Int64).alias("fold"))
    stored = stored.select("patient_id", "repeat", "fold", *[c for c in table.columns if c != "patient_id"])
    artifacts.write_parquet(stored, out_dir / "predictions.parquet", schema="oof")  # fold -1 = ensemble
    if cfg.plots:
        res.plots = _curves(table, classes, out_dir / "plots", f"{run_dir.name} on {out_dir.name}")
    if preds.attention is not None:
        _export_attention(other, _with_method(preds.attention), out_dir, cfg, res, progress, table)
    elif cfg.attention and info["fusion"] != "gene":
        from brcatool.contributions import contributions

        _export_attention(other, contributions(run_dir, other, mode="ensemble", device=cfg.device), out_dir,
                          cfg, res, progress, table)
    return res


# --------------------------------------------------------------------------- interpretability
def _with_method(att: Any, method: str = "attention") -> Any:
    import polars as pl

    return att.with_columns(pl.lit(method).alias("method")) if att is not None else None


def _export_attention(wd: Workdir, att: Any, out_dir: Path, cfg: EvaluateConfig, res: EvaluateResult,
                      progress: bool, predictions: Any = None) -> None:
    """attention.parquet (attention weights sum to 1 per patient; ``method`` says how they were made),
    top-k montages, heatmaps and (``--geojson``) one QuPath GeoJSON per slide."""
    if att is None or att.height == 0:
        res.notes.append("the models returned no patch weights")
        return
    from brcatool import patch_maps

    att = att.sort("patient_id", "slide_id", "patch_index")
    res.attention = artifacts.write_parquet(att, out_dir / "attention.parquet", schema="attention")
    res.montages, res.heatmaps = patch_maps.draw(wd, att, out_dir, top_k=cfg.top_k, heatmaps=cfg.heatmaps,
                                                 notes=res.notes, progress=progress)
    if cfg.geojson:
        from brcatool.interop import qupath

        preds = qupath.patient_predictions(predictions, res.classes) if predictions is not None else {}
        n = qupath.write_slide_collections(wd, att, preds, out_dir / "geojson", run=res.run, notes=res.notes)
        res.notes.append(f"GeoJSON for QuPath (File > Import objects): {n} slide(s) in {out_dir / 'geojson'}")
