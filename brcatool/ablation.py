"""The ablate stage: every fusion on the same saved split, seeds and settings, then one table.

Each model is an ordinary run (``runs/ablate-<name>-<model>/``, so ``evaluate`` works on it),
trained by ``training.run_train`` and scored by ``evaluation.run_evaluate``. The comparison
lands in ``ablations/<name>/``: ``summary.parquet`` (schema "summary"), ``summary.md``,
``metrics.png``, ``config.yaml`` and ``manifest.json``.

Differences are paired by fold (same patients in the same fold for both models) against the
best unimodal model (gene or image, highest fold-mean PR-AUC). Sanity checks re-run the chosen
fusion with labels permuted across patients (should score near chance) and with image bags
shuffled across patients (how much the images add).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brcatool import artifacts, config
from brcatool.artifacts import Manifest, Workdir
from brcatool.errors import ArtifactError, InputError
from brcatool.training import TrainConfig, TrainSettings

DEFAULT_FUSIONS = ("gene", "image", "concat", "late", "xattn")
UNIMODAL = ("gene", "image")
SUMMARY_METRICS = ("f1", "pr_auc", "roc_auc", "mcc", "balanced_accuracy", "brier")
TABLE_METRICS = ("f1", "pr_auc", "roc_auc", "mcc")
LABELS = {"f1": "F1", "pr_auc": "PR-AUC", "roc_auc": "ROC-AUC", "mcc": "MCC",
          "balanced_accuracy": "bal. acc.", "brier": "Brier"}
SANITY_KINDS = ("permuted-labels", "shuffled-images")


@dataclass
class AblateConfig(TrainSettings):
    """Options of ``brcatool ablate`` (defaults = the CLI's); training settings apply to every model."""

    fusions: list[str] = field(default_factory=lambda: list(DEFAULT_FUSIONS))
    aggregators: list[str] = field(default_factory=lambda: ["abmil"])
    sanity: bool = False
    sanity_fusion: str | None = None  # default: xattn when run, else the last fusion
    name: str = "default"
    bootstrap: int = 1000
    plots: bool = True  # the ablation bar chart
    run_plots: bool = True  # each run's evaluate figures (PR, ROC, ...; ~0.5 s each)

    def validate(self) -> None:
        from brcatool.models import AGGREGATORS, FUSIONS

        if not self.fusions or not self.aggregators:
            raise InputError("--fusions and --aggregators need at least one name each")
        for f in self.fusions:
            FUSIONS.get(f)
        for a in self.aggregators:
            AGGREGATORS.get(a)
        if len(set(self.fusions)) != len(self.fusions) or len(set(self.aggregators)) != len(self.aggregators):
            raise InputError("--fusions and --aggregators must not repeat a name")
        if self.sanity_fusion is not None and self.sanity_fusion not in self.fusions:
            raise InputError(f"sanity fusion {self.sanity_fusion!r} is not among --fusions",
                             fix=f"use one of: {', '.join(self.fusions)}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise InputError(f"--name {self.name!r} is not a usable folder name")
        if self.bootstrap < 0:
            raise InputError("--bootstrap must be >= 0")

    def params(self) -> dict[str, Any]:
        d = config.to_dict(self)
        for k in ("name", "device", "overwrite"):
            d.pop(k)
        return d

    def chosen_fusion(self) -> str:
        return self.sanity_fusion or ("xattn" if "xattn" in self.fusions else self.fusions[-1])

    def train_config(self, fusion: str, aggregator: str, name: str) -> TrainConfig:
        return TrainConfig(**self.shared(), fusion=fusion, aggregator=aggregator, name=name)


@dataclass
class ModelSpec:
    label: str  # row name in the table
    fusion: str
    aggregator: str
    kind: str = "model"  # or a SANITY_KINDS entry
    run: str = ""


@dataclass
class AblateResult:
    name: str
    out_dir: Path
    summary: Any  # polars DataFrame, one row per model
    markdown: str
    reference: str | None
    runs: dict[str, Path] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    split_sha256: str = ""
    seconds: float = 0.0


def model_specs(cfg: AblateConfig) -> list[ModelSpec]:
    """The models to compare; ``gene`` once (no patches to pool), the rest per aggregator."""
    specs: list[ModelSpec] = []
    one = len(cfg.aggregators) == 1
    for agg in cfg.aggregators:
        for f in cfg.fusions:
            if f == "gene":
                if agg == cfg.aggregators[0]:
                    specs.append(ModelSpec("gene", f, agg))
                continue
            specs.append(ModelSpec(f if one else f"{f}-{agg}", f, agg))
    for s in specs:
        s.run = run_name(cfg.name, s.label)
    return specs


def run_name(ablate_name: str, label: str) -> str:
    """The run (under ``runs/``) that ablation ``ablate_name`` trains for model ``label``."""
    return f"ablate-{ablate_name}-{label}"


# --------------------------------------------------------------------------- the stage
def run_ablate(workdir: Path | Workdir, cfg: AblateConfig, *, progress: bool = True) -> AblateResult:
    """Train and evaluate every model (finished runs are reused), then write the comparison."""
    from brcatool.cohort import load_cohort
    from brcatool.evaluation import EvaluateConfig, run_evaluate
    from brcatool.models import FUSIONS
    from brcatool.training import is_finished, run_train

    t0 = time.perf_counter()
    wd = workdir if isinstance(workdir, Workdir) else Workdir(Path(workdir))
    cfg.validate()
    out_dir = wd.ablation_dir(cfg.name)
    params = cfg.params()
    artifacts.check_params(out_dir / "manifest.json", params, overwrite=cfg.overwrite,
                           what=f"ablation {cfg.name!r}")  # same params: runs below are reused
    console = _console(progress)
    specs = model_specs(cfg)
    notes: list[str] = []
    evals: dict[str, Any] = {}
    loaded: list[Any] = []
    kinds = [FUSIONS.get(s.fusion) for s in specs]

    def full_cohort() -> Any:
        """One cohort with every modality some model uses, read once and only when needed."""
        if not loaded:
            loaded.append(load_cohort(wd, encoder=cfg.encoder, images=any(k.uses_image for k in kinds),
                                      expression=any(k.uses_gene for k in kinds), progress=progress))
        return loaded[0]

    def evaluate(spec: ModelSpec) -> None:
        ev = run_evaluate(wd, EvaluateConfig(run=spec.run, bootstrap=cfg.bootstrap, plots=cfg.run_plots,
                                             attention=False, seed=cfg.seed, overwrite=cfg.overwrite),
                          progress=False, reuse_covering=True)  # e.g. the demo's evaluation of its run
        evals[spec.label] = ev
        if console:
            m, sd = ev.fold_mean, ev.fold_sd
            console.print(f"  {spec.label}: PR-AUC {m['pr_auc']:.3f} ± {sd['pr_auc']:.3f}, "
                          f"F1 {m['f1']:.3f} ± {sd['f1']:.3f} ({spec.run})")

    for i, spec in enumerate(specs, 1):
        if console:
            console.print(f"[bold]ablate {cfg.name}[/]: model {i}/{len(specs)} {spec.label}")
        tcfg = cfg.train_config(spec.fusion, spec.aggregator, spec.run)
        run_train(wd, tcfg, progress=progress, cohort=None if is_finished(wd, tcfg) else full_cohort())
        evaluate(spec)
    if cfg.sanity:
        # trains one check at a time and yields it
        for spec in _sanity(wd, cfg, list(specs), notes, console, progress, full_cohort):
            specs.append(spec)
            evaluate(spec)
    split_sha = check_identical_splits(wd, [s.run for s in specs])
    ref = best_unimodal(specs, evals)
    if ref is None:
        notes.append("no unimodal model (gene or image) in --fusions: no paired differences")
    summary = summary_table(specs, evals, ref)
    md = markdown(summary, cfg, ref, evals, notes)
    plots: list[Path] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts.write_parquet(summary, out_dir / "summary.parquet", schema="summary")
    artifacts.write_text(out_dir / "summary.md", md)
    if cfg.plots:
        from brcatool import plots as P

        rows = summary.to_dicts()
        plots.append(P.ablation_bars(
            [r["model"] for r in rows], {LABELS[m]: [r[f"{m}_mean"] for r in rows] for m in TABLE_METRICS},
            {LABELS[m]: [r[f"{m}_sd"] for r in rows] for m in TABLE_METRICS}, out_dir / "metrics.png",
            title=f"Ablation {cfg.name} (mean ± sd over {cfg.folds} folds)"))
    config.write_yaml(cfg, out_dir / "config.yaml")
    manifest = Manifest("ablate", params)
    manifest.add_input(wd.splits)
    for s in specs:
        manifest.add_input(wd.run_dir(s.run) / "oof.parquet")
    seconds = time.perf_counter() - t0
    manifest.write(out_dir / "manifest.json", counts={"models": len(specs)}, name=cfg.name,
                   runs={s.label: s.run for s in specs}, reference=ref, split_sha256=split_sha,
                   seconds=round(seconds, 2))
    return AblateResult(name=cfg.name, out_dir=out_dir, summary=summary, markdown=md, reference=ref,
                        runs={s.label: wd.run_dir(s.run) for s in specs}, plots=plots, notes=notes,
                        split_sha256=split_sha, seconds=seconds)


def _console(progress: bool) -> Any:
    if not progress:
        return None
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _sanity(wd: Workdir, cfg: AblateConfig, specs: list[ModelSpec], notes: list[str], console: Any,
            progress: bool, full_cohort: Callable[[], Any]) -> Iterator[ModelSpec]:
    """The chosen fusion with permuted labels and with image bags shuffled across patients.

    ``full_cohort()`` gives the cohort (loaded at most once, and only if a check needs training).
    """
    from brcatool.cohort import check_splits, load_splits
    from brcatool.models import FUSIONS
    from brcatool.training import is_finished, run_train

    fusion = cfg.chosen_fusion()
    base = next(s for s in specs if s.fusion == fusion)
    kind = FUSIONS.get(fusion)
    splits = load_splits(wd.require(wd.splits, made_by="train"))
    checked: list[Any] = []

    def cohort() -> Any:
        if not checked:
            c = full_cohort().restrict(gene=kind.uses_gene, image=kind.uses_image)
            check_splits(splits, c, folds=cfg.folds, repeats=cfg.repeats)
            checked.append(c)
        return checked[0]

    for i, what in enumerate(SANITY_KINDS):
        if what == "shuffled-images" and not kind.uses_image:
            notes.append(f"shuffled-images check skipped: {fusion!r} uses no images")
            continue
        seed = cfg.seed * 7919 + 101 + i  # fixed per check, so a re-run reuses the finished run
        spec = ModelSpec(f"{base.label} ({what.replace('-', ' ')})", fusion, base.aggregator, kind=what,
                         run=f"{base.run}-{what}")
        if console:
            console.print(f"[bold]ablate {cfg.name}[/]: sanity check {spec.label}")
        tcfg = cfg.train_config(fusion, base.aggregator, spec.run)
        variant = None
        if not is_finished(wd, tcfg):
            variant = cohort().with_permuted_labels(seed) if what == "permuted-labels" else \
                cohort().with_shuffled_images(seed)
        run_train(wd, tcfg, progress=progress, cohort=variant, splits=splits)
        artifacts.write_json(wd.run_dir(spec.run) / "sanity.json",
                             {"kind": what, "seed": seed, "of": base.run,
                              "note": "labels permuted across patients" if what == "permuted-labels"
                              else "image bags shuffled across patients"})
        yield spec


# --------------------------------------------------------------------------- checks and tables
def check_identical_splits(wd: Workdir, runs: list[str]) -> str:
    """Every run's out-of-fold fold numbers must equal ``splits.json``; returns the split's sha256."""
    from brcatool.cohort import load_splits

    splits = load_splits(wd.require(wd.splits, made_by="train"))
    pos = {p: i for i, p in enumerate(splits.patient_ids)}
    for run in runs:
        oof = artifacts.read_parquet(wd.run_dir(run) / "oof.parquet", schema="oof", made_by="train")
        for pid, r, k in oof.select("patient_id", "repeat", "fold").iter_rows():
            if pid not in pos or splits.fold[int(r), pos[pid]] != int(k):
                raise ArtifactError(f"run {run!r} puts patient {pid} in another fold than splits.json",
                                    path=wd.run_dir(run), fix="re-run the ablation with --overwrite")
    return splits.sha256()


def best_unimodal(specs: list[ModelSpec], evals: dict[str, Any]) -> str | None:
    """The unimodal model with the highest fold-mean PR-AUC (then ROC-AUC)."""
    cands = [s.label for s in specs if s.kind == "model" and s.fusion in UNIMODAL]

    def score(label: str) -> tuple[float, float]:
        m = evals[label].fold_mean
        return tuple(-math.inf if not np.isfinite(m[k]) else m[k] for k in ("pr_auc", "roc_auc"))

    return max(cands, key=score) if cands else None


def paired_differences(per_fold: list[dict[str, Any]], ref: list[dict[str, Any]],
                       metric: str) -> np.ndarray:
    """model - reference per (repeat, fold) present in both."""
    theirs = {(f["repeat"], f["fold"]): f[metric] for f in ref}
    return np.array([f[metric] - theirs[(f["repeat"], f["fold"])] for f in per_fold
                     if (f["repeat"], f["fold"]) in theirs], dtype=np.float64)


def summary_table(specs: list[ModelSpec], evals: dict[str, Any], ref: str | None) -> Any:
    import polars as pl

    rows = []
    for s in specs:
        ev = evals[s.label]
        row: dict[str, Any] = {"model": s.label, "kind": s.kind, "fusion": s.fusion,
                               "aggregator": "" if s.fusion == "gene" else s.aggregator, "run": s.run,
                               "n_patients": ev.n_patients, "folds": len(ev.per_fold),
                               "reference": ref or ""}
        for m in SUMMARY_METRICS:
            lo, hi = ev.ci.get(m, (math.nan, math.nan))
            row.update({f"{m}_mean": ev.fold_mean[m], f"{m}_sd": ev.fold_sd[m], f"{m}_pooled": ev.pooled[m],
                        f"{m}_ci_low": lo, f"{m}_ci_high": hi})
            d = paired_differences(ev.per_fold, evals[ref].per_fold, m) if ref else np.zeros(0)
            d = d[np.isfinite(d)]
            row[f"{m}_diff_mean"] = float(d.mean()) if d.size else math.nan
            row[f"{m}_diff_sd"] = float(d.std(ddof=1)) if d.size > 1 else math.nan
            row[f"{m}_diff_wins"] = int((d > 0).sum()) if d.size else 0
        rows.append(row)
    return pl.DataFrame(rows).with_columns(pl.col("n_patients", "folds").cast(pl.Int64))


def _cell(mean: float, sd: float, lo: float, hi: float) -> str:
    def f(x: float) -> str:
        return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"

    return f"{f(mean)} ± {f(sd)} [{f(lo)}, {f(hi)}]"


def _diff(mean: float, sd: float) -> str:
    if mean is None or not np.isfinite(mean):
        return "–"
    return f"{mean:+.3f} ± {sd:.3f}" if sd is not None and np.isfinite(sd) else f"{mean:+.3f}"


def markdown(summary: Any, cfg: AblateConfig, ref: str | None, evals: dict[str, Any],
             notes: list[str]) -> str:
    """``summary.md``: the table people read (README shows it)."""
    first = next(iter(evals.values()))
    head = ["model", *(LABELS[m] for m in TABLE_METRICS)]
    if ref:
        head += [f"Δ F1 vs {ref}", f"Δ PR-AUC vs {ref}"]
    lines = [f"# Ablation `{cfg.name}`", "",
             f"Task {first.task} ({' vs '.join(first.classes)}); {cfg.folds}-fold CV x {cfg.repeats} on "
             f"the saved split, seed {cfg.seed}, {cfg.epochs} epochs max; aggregator(s) "
             f"{', '.join(cfg.aggregators)}.",
             f"Cells: mean ± sd over folds [pooled out-of-fold 95 % bootstrap CI, {cfg.bootstrap} patient "
             "resamples]. Δ: paired per-fold difference to the best unimodal model (mean ± sd).", "",
             "| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in summary.to_dicts():
        cells = [r["model"] if r["kind"] == "model" else f"*{r['model']}*"]
        cells += [_cell(r[f"{m}_mean"], r[f"{m}_sd"], r[f"{m}_ci_low"], r[f"{m}_ci_high"])
                  for m in TABLE_METRICS]
        if ref:
            cells += [_diff(r[f"{m}_diff_mean"], r[f"{m}_diff_sd"]) for m in ("f1", "pr_auc")]
        lines.append("| " + " | ".join(cells) + " |")
    if cfg.sanity:
        lines += ["", "*Italic rows are sanity checks*: permuted labels should score near chance "
                  "(ROC-AUC ≈ 0.5, MCC ≈ 0); shuffled images show what the images add."]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"

