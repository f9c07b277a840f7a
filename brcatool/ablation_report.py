"""The ablation's tables: ``summary.parquet`` rows and ``summary.md`` (what the README shows).

Each number says what it is: pooled out-of-fold values on the common patients with their
patient-bootstrap 95 % CI; fold mean ± sd in its own table; differences to the best unimodal
model with a paired bootstrap CI and the corrected resampled t-test p-value.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from brcatool.ablation import AblateConfig, ModelSpec

SUMMARY_METRICS = ("f1", "pr_auc", "roc_auc", "mcc", "balanced_accuracy", "brier")
TABLE_METRICS = ("f1", "pr_auc", "roc_auc", "mcc")
LABELS = {"f1": "F1", "pr_auc": "PR-AUC", "roc_auc": "ROC-AUC", "mcc": "MCC",
          "balanced_accuracy": "bal. acc.", "brier": "Brier"}

DIFF_KEYS = ("diff_mean", "diff_sd", "diff_wins", "diff_pooled", "diff_ci_low", "diff_ci_high", "diff_t",
             "diff_p")


def summary_table(specs: list[ModelSpec], scored: dict[str, Any], pairs: dict[str, Any], ref: str | None,
                  dropped: dict[str, int], null: dict[str, Any]) -> Any:
    """One row per model: scores on the common patients, differences to ``ref``, null p-values."""
    import polars as pl

    rows = []
    for s in specs:
        sc = scored[s.label]
        row: dict[str, Any] = {"model": s.label, "kind": s.kind, "fusion": s.fusion,
                               "aggregator": "" if s.fusion == "gene" else s.aggregator, "run": s.run,
                               "n_patients": sc.n_patients, "n_left_out": dropped.get(s.label, 0),
                               "folds": len(sc.per_fold), "reference": ref or ""}
        for m in SUMMARY_METRICS:
            lo, hi = sc.ci.get(m, (math.nan, math.nan))
            row.update({f"{m}_pooled": sc.pooled[m], f"{m}_ci_low": lo, f"{m}_ci_high": hi,
                        f"{m}_mean": sc.fold_mean[m], f"{m}_sd": sc.fold_sd[m]})
            d = pairs.get(s.label, {}).get(m, {})
            for k in DIFF_KEYS:
                row[f"{m}_{k}"] = d.get(k, 0 if k == "diff_wins" else math.nan)
        tested = bool(null) and s.kind == "model" and s.run == null.get("run")
        for m in ("roc_auc", "pr_auc"):  # the p compares the run on its own patients, not the common ones
            row[f"{m}_perm_real"] = null["metrics"][m]["real"] if tested else math.nan
            row[f"{m}_perm_p"] = null["metrics"][m]["p"] if tested else math.nan
        row["perm_n"] = int(null.get("n_patients", 0)) if tested else 0
        rows.append(row)
    ints = ("n_patients", "n_left_out", "folds", "perm_n", *(f"{m}_diff_wins" for m in SUMMARY_METRICS))
    return pl.DataFrame(rows).with_columns(pl.col(*ints).cast(pl.Int64))


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _cell(value: float, lo: float, hi: float) -> str:
    return f"{_f(value)} [{_f(lo)}, {_f(hi)}]"


def _p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _diff(d: float, lo: float, hi: float) -> str:
    return "–" if d is None or not np.isfinite(d) else f"{d:+.3f} [{_f(lo)}, {_f(hi)}]"


def markdown(summary: Any, cfg: AblateConfig, ref: str | None, evals: dict[str, Any], notes: list[str],
             null: dict[str, Any]) -> str:
    """``summary.md``: pooled values with CIs, paired differences, fold mean ± sd, the null."""
    first = next(iter(evals.values()))
    rows = summary.to_dicts()
    n = rows[0]["n_patients"]
    split = "site-preserved" if cfg.split == "site" else "patient-stratified"
    lines = [f"# Ablation `{cfg.name}`", "",
             f"Task {first.task} ({' vs '.join(first.classes)}); {cfg.folds}-fold {split} CV x {cfg.repeats} "
             f"on the saved split, seed {cfg.seed}, {cfg.epochs} epochs max; aggregator(s) "
             f"{', '.join(cfg.aggregators)}. Every row is scored on the same **{n} patients** (those every "
             "model can use).", "",
             f"Cells: pooled out-of-fold value [95 % CI, {cfg.bootstrap} patient bootstrap resamples]."]
    head = ["model", *(LABELS[m] for m in TABLE_METRICS)]
    if ref:
        lines.append(f"Δ: pooled difference to the best unimodal model ({ref}) on the same patients "
                     "[paired bootstrap 95 % CI]; p: Nadeau-Bengio corrected resampled t-test over the "
                     f"{cfg.folds} x {cfg.repeats} per-fold differences.")
        head += [f"Δ PR-AUC vs {ref}", "p", f"Δ ROC-AUC vs {ref}", "p"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        cells = [r["model"] if r["kind"] == "model" else f"*{r['model']}*"]
        cells += [_cell(r[f"{m}_pooled"], r[f"{m}_ci_low"], r[f"{m}_ci_high"]) for m in TABLE_METRICS]
        if ref:
            for m in ("pr_auc", "roc_auc"):
                cells += [_diff(r[f"{m}_diff_pooled"], r[f"{m}_diff_ci_low"], r[f"{m}_diff_ci_high"]),
                          _p(r[f"{m}_diff_p"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Fold mean ± sd over the {rows[0]['folds']} folds (same patients; a second estimator, "
              "shown apart from the pooled values):", "",
              "| model | " + " | ".join(LABELS[m] for m in TABLE_METRICS) + " |",
              "|---|" + "|".join(["---:"] * len(TABLE_METRICS)) + "|"]
    for r in rows:
        name = r["model"] if r["kind"] == "model" else f"*{r['model']}*"
        lines.append(f"| {name} | " + " | ".join(f"{_f(r[f'{m}_mean'])} ± {_f(r[f'{m}_sd'])}"
                                                  for m in TABLE_METRICS) + " |")
    if cfg.sanity:
        lines += ["", "*Italic rows are sanity checks*: permuted labels (within each validation fold) should "
                  "score near chance (ROC-AUC ≈ 0.5, MCC ≈ 0); shuffled images (bags permuted among patients "
                  "with images, within folds) show what the pairing of image and patient adds. They get no "
                  "Δ or p: their labels or bags differ from the reference's, so a paired difference would "
                  "compare two different tasks."]
    if null:
        parts = [f"{LABELS[m]} {_f(v['real'])} vs null mean {_f(v['null_mean'])} (95th percentile "
                 f"{_f(v['null_q95'])}), p = {_p(v['p'])}" for m, v in null["metrics"].items()
                 if m in ("roc_auc", "pr_auc")]
        lines += ["", f"Label-permutation null: `{null['fusion']}` re-fitted on {null['permutations']} label "
                  f"permutations of the same split; empirical p = (1 + #null ≥ real) / "
                  f"({null['permutations']} + 1) for the real run on its own {null.get('n_patients', '?')} "
                  "patients (summary.parquet: `<metric>_perm_real`, `perm_n`; not the common-patient "
                  "value above): "
                  + "; ".join(parts) + "."]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"
