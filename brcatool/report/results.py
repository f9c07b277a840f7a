"""The Runs and Ablation sections: metrics with CIs, per-fold values, the figures stages wrote.

Tables are read by column name and everything unknown is still shown under its own header, so a
newer ablation table (more columns, other metrics) or evaluation (more figures) keeps working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brcatool import metrics as M
from brcatool.artifacts import Workdir
from brcatool.report.images import inline
from brcatool.report.read import Notes, duration, json_file, number, pngs, table, text_file

#: Display names of metrics (anything else is shown under its own name).
LABELS = {"f1": "F1", "pr_auc": "PR-AUC", "roc_auc": "ROC-AUC", "accuracy": "Accuracy", "mcc": "MCC",
          "balanced_accuracy": "Balanced accuracy", "brier": "Brier (lower is better)"}
#: Evaluate's figures in reading order; other PNGs in the folder follow, sorted.
PLOT_ORDER = ("pr_curve.png", "roc_curve.png", "confusion.png", "calibration.png", "training_curves.png")
#: Metrics of the ablation's main table, when summary.parquet has them (``<metric>_mean``, ...).
ABLATION_HEADLINE = ("f1", "pr_auc", "roc_auc", "mcc")
FOLD_KEYS = ("repeat", "fold", "n", "threshold", "best_epoch")
#: Ablation columns shown in a row's header or nowhere else needed; per headline metric, the cell's.
IDENTITY = ("model", "kind", "fusion", "aggregator", "run", "reference")
CELL_KEYS = ("pooled", "ci_low", "ci_high", "mean", "sd")


def label(metric: str) -> str:
    return LABELS.get(metric, metric.replace("_", " "))


def select_runs(wd: Workdir, names: list[str] | None) -> list[Path]:
    """The named runs (each must be finished), or every finished run, oldest first."""
    from brcatool.evaluation import finished_runs, resolve_run

    if names:
        return [resolve_run(wd, n) for n in names]
    return finished_runs(wd)


# --------------------------------------------------------------------------- runs
def runs_section(wd: Workdir, notes: Notes, run_dirs: list[Path]) -> dict[str, Any]:
    if not run_dirs:
        return {"ran": False, "hint": f"brcatool train -w {wd.root}   then   brcatool evaluate -w {wd.root}"}
    runs = [r for r in (run_info(d, notes) for d in run_dirs) if r is not None]
    return {"ran": bool(runs), "runs": runs, "hint": f"brcatool train -w {wd.root}"}


def run_info(run_dir: Path, notes: Notes) -> dict[str, Any] | None:
    """One run: its metrics (evaluate's when it ran, else train's), folds, figures and patients."""
    mets = json_file(run_dir / "metrics.json", notes)
    man = json_file(run_dir / "manifest.json", notes) or {}
    if mets is None:
        return None
    ev = json_file(run_dir / "eval" / "metrics.json", notes)
    src = ev or mets
    cfg = man.get("params") or {}
    classes = [str(c) for c in src.get("classes") or mets.get("classes") or []]
    plots = [(p, inline(p)) for p in pngs(run_dir / "eval" / "plots", PLOT_ORDER)]
    thresholds = [number(f.get("threshold")) for f in mets.get("per_fold") or []]
    thresholds = [t for t in thresholds if t is not None]
    return {
        "name": run_dir.name, "task": src.get("task") or mets.get("task"), "classes": classes,
        "fusion": mets.get("fusion") or cfg.get("fusion"),
        "aggregator": mets.get("aggregator") or cfg.get("aggregator"),
        "finished": man.get("finished"), "seconds": duration(man),
        "sanity": _sanity(json_file(run_dir / "sanity.json", notes)),
        "evaluated": ev is not None, "bootstrap": (ev or {}).get("bootstrap"),
        "metrics": metric_rows(src),
        "folds": fold_table(mets.get("per_fold") or [], (ev or {}).get("per_fold") or []),
        "threshold": {"setting": cfg.get("threshold"), "min": min(thresholds) if thresholds else None,
                      "max": max(thresholds) if thresholds else None},
        "settings": {k: cfg[k] for k in ("folds", "repeats", "epochs", "patience", "lr", "hidden", "encoder",
                                         "missing", "seed") if k in cfg},
        "patients": _patients(run_dir, classes, notes),
        "plots": [{"image": img, "caption": p.stem.replace("_", " "), "path": str(p)} for p, img in plots],
        "notes": [str(n) for n in (ev or {}).get("notes") or []],
        "external": _externals(run_dir, notes),
    }


def _sanity(d: Any) -> dict[str, str] | None:
    """ablate's ``sanity.json`` of a check run: what was scrambled, of which run."""
    if not isinstance(d, dict):
        return None
    return {"kind": str(d.get("kind") or "sanity check"), "of": str(d.get("of") or "?"),
            "note": str(d.get("note") or "")}


def metric_rows(d: dict[str, Any]) -> list[dict[str, Any]]:
    """(metric, pooled, fold mean, fold sd, CI) rows from a train or evaluate metrics.json."""
    pooled, mean, sd = d.get("pooled") or {}, d.get("fold_mean") or {}, d.get("fold_sd") or {}
    ci = d.get("ci95") or {}
    names = [m for m in M.EVAL_METRIC_NAMES if m in pooled or m in mean]
    names += sorted((set(pooled) | set(mean)) - set(names))
    rows = []
    for m in names:
        lo, hi = (list(ci.get(m) or []) + [None, None])[:2]
        rows.append({"metric": m, "label": label(m), "pooled": number(pooled.get(m)),
                     "mean": number(mean.get(m)), "sd": number(sd.get(m)), "lo": number(lo),
                     "hi": number(hi)})
    return rows


def fold_table(train_folds: list[dict[str, Any]], eval_folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-fold values: train's (threshold, best epoch) merged with evaluate's metrics by (repeat, fold)."""
    rows: dict[tuple[Any, Any], dict[str, Any]] = {}
    for f in [*train_folds, *eval_folds]:
        rows.setdefault((f.get("repeat"), f.get("fold")), {}).update(f)
    keys: list[str] = []
    for r in rows.values():
        keys += [k for k in r if k not in keys]
    repeats = {k[0] for k in rows}
    lead = [k for k in FOLD_KEYS if k in keys and not (k == "repeat" and len(repeats) <= 1)]
    metric_keys = [m for m in M.EVAL_METRIC_NAMES if m in keys]
    rest = [k for k in keys if k not in lead and k not in metric_keys and k != "repeat"]
    columns = lead + metric_keys + rest
    return {"columns": [{"key": k, "label": label(k) if k in metric_keys else k.replace("_", " ")}
                        for k in columns],
            "rows": [[r.get(k) for k in columns] for _, r in sorted(rows.items(), key=lambda kv: str(kv[0]))]}


def _patients(run_dir: Path, classes: list[str], notes: Notes) -> dict[str, Any]:
    oof = table(run_dir / "oof.parquet", notes)
    if oof is None or "patient_id" not in oof.columns:
        return {"n": None, "by_class": [], "ids": []}
    ids = sorted(set(oof["patient_id"].to_list()))
    by_class: dict[str, int] = {}
    if "target" in oof.columns:
        first = oof.unique("patient_id", keep="first")
        for t in first["target"].to_list():
            name = classes[int(t)] if t is not None and 0 <= int(t) < len(classes) else str(t)
            by_class[name] = by_class.get(name, 0) + 1
    return {"n": len(ids), "by_class": [{"label": k, "n": v} for k, v in by_class.items()], "ids": ids}


def _externals(run_dir: Path, notes: Notes) -> list[dict[str, Any]]:
    base = run_dir / "external"
    if not base.is_dir():
        return []
    out = []
    for d in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        ev = json_file(d / "metrics.json", notes)
        if ev is not None:
            out.append({"name": d.name, "n_patients": ev.get("n_patients"), "bootstrap": ev.get("bootstrap"),
                        "metrics": metric_rows(ev)})
    return out


# --------------------------------------------------------------------------- ablation
def ablation_section(wd: Workdir, notes: Notes) -> dict[str, Any]:
    base = wd.ablations_dir
    dirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and (p / "summary.parquet").is_file()) if base.is_dir() else []
    if not dirs:
        return {"ran": False, "hint": f"brcatool ablate --sanity -w {wd.root}"}
    return {"ran": True, "ablations": [a for a in (ablation_info(d, notes) for d in dirs) if a is not None]}


def ablation_info(folder: Path, notes: Notes) -> dict[str, Any] | None:
    summary = table(folder / "summary.parquet", notes)
    if summary is None:
        return None
    man = json_file(folder / "manifest.json", notes) or {}
    cols = list(summary.columns)
    records = summary.to_dicts()
    names = [str(r.get("model", r.get("run", i))) for i, r in enumerate(records)]
    metrics = [c[: -len("_mean")] for c in cols if c.endswith("_mean") and not c.endswith("_diff_mean")]
    headline = [m for m in ABLATION_HEADLINE if m in metrics] or metrics[:4]
    ref = man.get("reference") or next((r.get("reference") for r in records if r.get("reference")), None)
    shown = set(IDENTITY) | {c for m in metrics for c in cols if c.startswith(f"{m}_") and (
        m not in headline or c[len(m) + 1:] in CELL_KEYS or c.startswith(f"{m}_diff_"))}
    also = [c for c in cols if c not in shown]  # e.g. patient counts, permutation p-values
    rows = []
    for name, r in zip(names, records, strict=True):
        cells = [_cell(r, m) for m in headline]
        diffs = [_diff(r, m, cols) for m in headline if f"{m}_diff_mean" in cols]
        kind = str(r.get("kind") or "model")
        rows.append({"model": name, "kind": kind, "sanity": kind != "model", "cells": cells, "diffs": diffs,
                     "run": r.get("run"),
                     "also": [(c.replace("_", " "), r[c]) for c in also if _shown(r.get(c))]})
    null = table(folder / "null.parquet", notes)
    return {
        "name": folder.name, "reference": ref, "metrics": [{"key": m, "label": label(m)} for m in headline],
        "has_diffs": any(f"{m}_diff_mean" in cols for m in headline), "rows": rows, "has_also": bool(also),
        "all_columns": cols, "models": names, "transposed": [[c, *[r.get(c) for r in records]] for c in cols],
        "prose": _prose(text_file(folder / "summary.md", notes) or ""),
        "split_sha256": man.get("split_sha256"), "best": _best(rows, headline),
        "null": None if null is None else {"columns": list(null.columns), "rows": null.rows()},
        "images": [{"image": inline(p), "path": str(p), "caption": p.stem.replace("_", " ")}
                   for p in pngs(folder, ("metrics.png",))],
    }


def _shown(v: Any) -> bool:
    """Worth a line: not missing, not NaN."""
    return v is not None and (not isinstance(v, float) or number(v) is not None)


def _cell(r: dict[str, Any], m: str) -> dict[str, Any]:
    """One metric of one model: the pooled value with its CI (when the table has them), fold mean ± sd."""
    return {"pooled": number(r.get(f"{m}_pooled")), "mean": number(r.get(f"{m}_mean")),
            "sd": number(r.get(f"{m}_sd")), "lo": number(r.get(f"{m}_ci_low")),
            "hi": number(r.get(f"{m}_ci_high"))}


def _diff(r: dict[str, Any], m: str, cols: list[str]) -> dict[str, Any]:
    """The paired difference of one metric: the pooled difference with its CI when the table has them,
    mean ± sd over folds, then every other ``<m>_diff_*`` column (wins, t, p, ...) by name."""
    pre = f"{m}_diff_"
    extra = {c[len(pre):]: r.get(c) for c in cols
             if c.startswith(pre) and c[len(pre):] not in ("mean", "sd", "pooled", "ci_low", "ci_high")}
    return {"pooled": number(r.get(f"{pre}pooled")), "mean": number(r.get(f"{pre}mean")),
            "sd": number(r.get(f"{pre}sd")), "lo": number(r.get(f"{pre}ci_low")),
            "hi": number(r.get(f"{pre}ci_high")),
            "extra": [(k.replace("_", " "), v) for k, v in extra.items()]}


def _prose(md: str) -> list[str]:
    """summary.md's sentences and notes (its table and title are shown otherwise)."""
    return [ln.strip().lstrip("-").strip().replace("*", "").replace("`", "") for ln in md.splitlines()
            if ln.strip() and not ln.lstrip().startswith(("|", "#", "Cells:"))]


def _best(rows: list[dict[str, Any]], headline: list[str]) -> dict[str, Any] | None:
    """The best model (sanity checks aside) by PR-AUC, else by the first metric of the table; its pooled
    value (with CI) when the table has one, else its fold mean (with sd)."""
    if not headline:
        return None
    i = headline.index("pr_auc") if "pr_auc" in headline else 0

    def value(r: dict[str, Any]) -> float | None:
        c = r["cells"][i]
        return c["pooled"] if c["pooled"] is not None else c["mean"]

    scored = [(value(r), r) for r in rows if not r["sanity"] and value(r) is not None]
    if not scored:
        return None
    v, row = max(scored, key=lambda t: t[0])
    c = row["cells"][i]
    return {"model": row["model"], "metric": label(headline[i]), "value": v,
            "pooled": c["pooled"] is not None, "sd": c["sd"], "lo": c["lo"], "hi": c["hi"]}
