"""The ablate stage: every fusion on the same saved split, seeds and settings, then one table.

Each model is an ordinary run (``runs/ablate-<name>-<model>/``, so ``evaluate`` works on it),
trained by ``training.run_train`` and scored by ``evaluation.run_evaluate``. The comparison
lands in ``ablations/<name>/``: ``summary.parquet`` (schema "summary"), ``summary.md``,
``metrics.png``, ``null.parquet`` (with ``--sanity``), ``config.yaml`` and ``manifest.json``.

Every model is scored on the common patients (those every compared model can use), so the rows
and their differences describe the same people. Cells are pooled out-of-fold values with a
patient bootstrap CI; the fold mean ± sd is a separate table. Differences to the best unimodal
model (gene or image, highest pooled PR-AUC) are paired: per fold (mean ± sd, with the
Nadeau-Bengio corrected resampled t-test over the R x K folds) and pooled (paired patient
bootstrap CI). Sanity checks re-run the chosen fusion with labels permuted (one run, plus
``permutations`` cheap re-fits giving the empirical p-value of the real score) and with image bags
shuffled among the patients that have images, within folds (what the pairing adds).
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
from brcatool.ablation_report import LABELS, TABLE_METRICS, markdown, summary_table
from brcatool.artifacts import Manifest, Workdir
from brcatool.comparison import common_patients, empirical_p, paired, restrict, scores
from brcatool.errors import ArtifactError, InputError
from brcatool.outputs import replacing
from brcatool.splits import splits_path
from brcatool.training import TrainConfig, TrainSettings

DEFAULT_FUSIONS = ("gene", "image", "concat", "late", "xattn")
UNIMODAL = ("gene", "image")
SANITY_KINDS = ("permuted-labels", "shuffled-images")
NULL_METRICS = ("roc_auc", "pr_auc", "f1", "mcc")
NULL_SCHEME = "within-validation-folds"  # how null.parquet's labels were permuted (older tables: redone)


@dataclass
class AblateConfig(TrainSettings):
    """Options of ``brcatool ablate`` (defaults = the CLI's); training settings apply to every model."""

    fusions: list[str] = field(default_factory=lambda: list(DEFAULT_FUSIONS))
    aggregators: list[str] = field(default_factory=lambda: ["abmil"])
    sanity: bool = False
    sanity_fusion: str | None = None  # default: xattn when run, else the last fusion
    permutations: int = 20  # --sanity: label permutations for the null distribution
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
        if self.permutations < 0:
            raise InputError("--permutations must be >= 0")
        self.check_shared()

    def params(self) -> dict[str, Any]:
        d = config.to_dict(self)
        for k in ("name", "device", "overwrite", "dask"):  # where it runs does not change the result
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
    n_common: int = 0  # patients every model is scored on
    null: dict[str, Any] = field(default_factory=dict)  # --sanity: the label-permutation null


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
                                      expression=any(k.uses_gene for k in kinds), progress=progress,
                                      **cfg.slide_filter()))
        return loaded[0]

    def source(variant: tuple[str, int] | None = None) -> Any:
        """How a Dask worker rebuilds ``full_cohort()`` (and a sanity variant of it) from the workdir."""
        from brcatool.training import CohortSource

        return CohortSource.of(wd, cfg, images=any(k.uses_image for k in kinds),
                               expression=any(k.uses_gene for k in kinds), variant=variant)

    def evaluate(spec: ModelSpec) -> None:
        ev = run_evaluate(wd, EvaluateConfig(run=spec.run, bootstrap=cfg.bootstrap, plots=cfg.run_plots,
                                             attention=False, seed=cfg.seed, overwrite=cfg.overwrite),
                          progress=False, reuse_covering=True)  # e.g. the demo's evaluation of its run
        evals[spec.label] = ev
        if console:
            m, sd = ev.fold_mean, ev.fold_sd
            console.print(f"  {spec.label}: PR-AUC {m['pr_auc']:.3f} ± {sd['pr_auc']:.3f}, "
                          f"F1 {m['f1']:.3f} ± {sd['f1']:.3f} ({spec.run}, own patients)")

    if cfg.dask:  # every model x fold (sanity checks and null included) as one batch of tasks
        _fit_all(wd, cfg, specs, full_cohort, source, console, progress)
    for i, spec in enumerate(specs, 1):
        if console:
            console.print(f"[bold]ablate {cfg.name}[/]: model {i}/{len(specs)} {spec.label}")
        tcfg = cfg.train_config(spec.fusion, spec.aggregator, spec.run)
        run_train(wd, tcfg, progress=progress, cohort=None if is_finished(wd, tcfg) else full_cohort(),
                  source=source())
        evaluate(spec)
    null: dict[str, Any] = {}
    if cfg.sanity:
        # trains one check at a time and yields it
        for spec in _sanity(wd, cfg, list(specs), notes, console, progress, full_cohort, source):
            specs.append(spec)
            evaluate(spec)
    if loaded and loaded[0].left_out:
        gone = ", ".join(f"{n} {why}" for why, n in sorted(loaded[0].left_out.items()))
        notes.append(f"slides left out of the bags: {gone} (see --slide-types, --keep-all-samples)")
    split_sha = check_identical_splits(wd, cfg, [s.run for s in specs])
    classes = next(iter(evals.values())).classes
    oofs = {s.label: artifacts.read_parquet(wd.run_dir(s.run) / "oof.parquet", schema="oof", made_by="train")
            for s in specs}
    common = common_patients(oofs)
    if not common:
        raise ArtifactError("no patient is usable by every compared model", path=wd.root,
                            fix="compare fusions whose modalities overlap, or use --missing mask")
    scored = {label: scores(restrict(t, common), classes, n_boot=cfg.bootstrap, seed=cfg.seed)
              for label, t in oofs.items()}
    dropped = {label: int(t["patient_id"].n_unique()) - len(common) for label, t in oofs.items()}
    if any(dropped.values()):
        notes.append(f"every model is scored on the {len(common)} patients all models can use ("
                     + ", ".join(f"{label} left out {n}" for label, n in dropped.items() if n) + ")")
    ref = best_unimodal(specs, scored)
    if ref is None:
        notes.append("no unimodal model (gene or image) in --fusions: no paired differences")
    pairs = {s.label: paired(scored[s.label], scored[ref], restrict(oofs[s.label], common),
                             restrict(oofs[ref], common), common, classes, folds=cfg.folds,
                             n_boot=cfg.bootstrap, seed=cfg.seed)
             for s in specs if ref and s.label != ref and s.kind == "model"}  # sanity rows: other labels
    flat = sorted(label for label, d in pairs.items() if any(v["diff_sd"] == 0 for v in d.values()))
    if flat:
        notes.append(f"no t-test p for {', '.join(flat)} on a metric whose per-fold differences are all "
                     "equal (zero variance: the test is undefined, shown as –)")
    null_table = None
    if cfg.sanity and cfg.permutations:
        null, null_table = _label_null(wd, cfg, specs, oofs, classes, console, progress, full_cohort, source)
    summary = summary_table(specs, scored, pairs, ref, dropped, null)
    md = markdown(summary, cfg, ref, evals, notes, null)
    plots: list[Path] = []
    # written beside an older ablation of this name (one writer at a time), swapped in when complete
    with replacing(wd, [out_dir], tag="ablate") as staged:
        new_dir = staged.at(out_dir)
        new_dir.mkdir(parents=True, exist_ok=True)
        if null_table is not None:  # made (or an identical one reused) by this run above
            artifacts.write_parquet(null_table, new_dir / "null.parquet", schema="summary")
        artifacts.write_parquet(summary, new_dir / "summary.parquet", schema="summary")
        artifacts.write_text(new_dir / "summary.md", md)
        if cfg.plots:
            from brcatool import plots as P

            rows = summary.to_dicts()
            plots.append(P.ablation_bars(
                [r["model"] for r in rows],
                {LABELS[m]: [r[f"{m}_mean"] for r in rows] for m in TABLE_METRICS},
                {LABELS[m]: [r[f"{m}_sd"] for r in rows] for m in TABLE_METRICS}, new_dir / "metrics.png",
                title=f"Ablation {cfg.name} (fold mean ± sd, {cfg.folds} folds x {cfg.repeats}, "
                      f"{len(common)} common patients)"))
        config.write_yaml(cfg, new_dir / "config.yaml")
        manifest = Manifest("ablate", params)
        manifest.add_input(splits_path(wd, cfg.split))
        for s in specs:
            manifest.add_input(wd.run_dir(s.run) / "oof.parquet")
        seconds = time.perf_counter() - t0
        manifest.write(new_dir / "manifest.json",
                       counts={"models": len(specs), "common_patients": len(common)}, name=cfg.name,
                       runs={s.label: s.run for s in specs}, reference=ref, split_sha256=split_sha,
                       seconds=round(seconds, 2))
    plots = [out_dir / p.relative_to(new_dir) for p in plots]
    return AblateResult(name=cfg.name, out_dir=out_dir, summary=summary, markdown=md, reference=ref,
                        runs={s.label: wd.run_dir(s.run) for s in specs}, plots=plots, notes=notes,
                        split_sha256=split_sha, seconds=seconds, n_common=len(common), null=null)


def _console(progress: bool) -> Any:
    if not progress:
        return None
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _saved_splits(wd: Workdir, cfg: AblateConfig, cohort: Any, *, save: bool = True) -> Any:
    from brcatool.splits import get_splits

    splits, _ = get_splits(wd, cohort, folds=cfg.folds, repeats=cfg.repeats, seed=cfg.seed, by=cfg.split,
                           site_column=cfg.site_column, save=save)
    return splits


def _sanity_checks(cfg: AblateConfig, specs: list[ModelSpec]) -> list[tuple[ModelSpec, int]]:
    """The sanity runs of the chosen fusion (a check its fusion cannot make left out), with the
    seed of each (fixed per check, so a re-run reuses the finished run)."""
    from brcatool.models import FUSIONS

    fusion = cfg.chosen_fusion()
    base = next(s for s in specs if s.fusion == fusion)
    return [(ModelSpec(f"{base.label} ({what.replace('-', ' ')})", fusion, base.aggregator, kind=what,
                       run=f"{base.run}-{what}"), cfg.seed * 7919 + 101 + i)
            for i, what in enumerate(SANITY_KINDS)
            if what != "shuffled-images" or FUSIONS.get(fusion).uses_image]


def _null_fits(cfg: AblateConfig, base: ModelSpec) -> list[tuple[int, int, TrainConfig]]:
    """(permutation, seed, training config) of every label-permutation re-fit."""
    return [(i, cfg.seed * 7919 + 1000 + i,
             cfg.train_config(base.fusion, base.aggregator, f"{base.run}-null-{i}"))
            for i in range(cfg.permutations)]


def _fit_all(wd: Workdir, cfg: AblateConfig, specs: list[ModelSpec], full_cohort: Callable[[], Any],
             source: Callable[..., Any], console: Any, progress: bool) -> None:
    """``--dask``: every unfinished model's folds, the sanity checks' and the label null's, as one
    batch of Dask tasks (``training.units``); the runs below then assemble them from the records."""
    from brcatool.models import FUSIONS
    from brcatool.training import fold_jobs, is_finished, run_fold_jobs, with_variant

    jobs = []
    for spec in specs:
        tcfg = cfg.train_config(spec.fusion, spec.aggregator, spec.run)
        if not is_finished(wd, tcfg):
            jobs += fold_jobs(wd, tcfg, full_cohort(), source=source())
    if cfg.sanity:
        kind = FUSIONS.get(cfg.chosen_fusion())
        base = next(s for s in specs if s.fusion == cfg.chosen_fusion())
        variants = [(s.run, (s.kind, seed)) for s, seed in _sanity_checks(cfg, specs)]
        if _cached_null(wd, cfg, base) is None:
            variants += [(t.name, ("permuted-labels", seed)) for _, seed, t in _null_fits(cfg, base)]
        for run, variant in variants:
            tcfg = cfg.train_config(base.fusion, base.aggregator, run)
            if is_finished(wd, tcfg):  # (a null re-fit has no run: never finished)
                continue
            c = full_cohort().restrict(gene=kind.uses_gene, image=kind.uses_image)
            splits = _saved_splits(wd, cfg, c, save=False)
            jobs += fold_jobs(wd, tcfg, with_variant(c, variant, splits, cfg.missing), splits=splits,
                              source=source(variant))
    if console:
        console.print(f"[bold]ablate {cfg.name}[/]: {len(jobs)} fold fits on Dask ({cfg.dask})")
    run_fold_jobs(jobs, str(cfg.dask), progress=progress, label=f"ablate {cfg.name}: fold fits")


def _sanity(wd: Workdir, cfg: AblateConfig, specs: list[ModelSpec], notes: list[str], console: Any,
            progress: bool, full_cohort: Callable[[], Any],
            source: Callable[..., Any]) -> Iterator[ModelSpec]:
    """The chosen fusion with permuted labels, and with image bags shuffled among the patients that
    have images within each fold (of every repeat), so only the pairing differs from the real run.

    ``full_cohort()`` gives the cohort (loaded at most once, and only if a check needs training).
    """
    from brcatool.models import FUSIONS
    from brcatool.training import is_finished, run_train, with_variant

    fusion = cfg.chosen_fusion()
    base = next(s for s in specs if s.fusion == fusion)
    kind = FUSIONS.get(fusion)
    checked: list[Any] = []

    def cohort() -> tuple[Any, Any]:
        if not checked:
            c = full_cohort().restrict(gene=kind.uses_gene, image=kind.uses_image)
            checked.append((c, _saved_splits(wd, cfg, c)))
        return checked[0]

    if not kind.uses_image:
        notes.append(f"shuffled-images check skipped: {fusion!r} uses no images")
    for spec, seed in _sanity_checks(cfg, specs):
        what = spec.kind
        if console:
            console.print(f"[bold]ablate {cfg.name}[/]: sanity check {spec.label}")
        tcfg = cfg.train_config(fusion, base.aggregator, spec.run)
        variant, splits = None, None
        if not is_finished(wd, tcfg):
            c, splits = cohort()
            variant = with_variant(c, (what, seed), splits, cfg.missing)
        run_train(wd, tcfg, progress=progress, cohort=variant, splits=splits, source=source((what, seed)))
        artifacts.write_json(wd.run_dir(spec.run) / "sanity.json",
                             {"kind": what, "seed": seed, "of": base.run,
                              "note": "labels permuted within each validation fold, per repeat"
                              if what == "permuted-labels"
                              else "image bags shuffled among patients with images, within folds"})
        yield spec


def _cached_null(wd: Workdir, cfg: AblateConfig, base: ModelSpec) -> Any:
    """The null table this ablation wrote before with the same permutations, else None."""
    path = wd.ablation_dir(cfg.name) / "null.parquet"
    if path.is_file() and not cfg.overwrite:
        old = artifacts.read_parquet(path, schema="summary")
        if (old.height == cfg.permutations and set(old["run"].unique().to_list()) == {base.run}
                and "scheme" in old.columns and set(old["scheme"].to_list()) == {NULL_SCHEME}):
            return old
    return None


def _label_null(wd: Workdir, cfg: AblateConfig, specs: list[ModelSpec], oofs: dict[str, Any],
                classes: list[str], console: Any, progress: bool,
                full_cohort: Callable[[], Any], source: Callable[..., Any]) -> tuple[dict[str, Any], Any]:
    """The chosen fusion re-fitted on ``cfg.permutations`` label permutations (nothing written; the
    caller stores the table as ``null.parquet``, reused while the ablation's parameters match):
    pooled scores of each, and the empirical p-value of the real run's pooled score on its own
    patients (``n_patients`` of them, the null's patients too)."""
    import polars as pl

    from brcatool.evaluation import pooled_metrics
    from brcatool.models import FUSIONS
    from brcatool.training import oof_only, with_variant

    fusion = cfg.chosen_fusion()
    base = next(s for s in specs if s.fusion == fusion and s.kind == "model")
    meta = {"fusion": fusion, "run": base.run, "permutations": cfg.permutations, "params": cfg.params()}
    table = _cached_null(wd, cfg, base)
    if table is None:
        kind = FUSIONS.get(fusion)
        c = full_cohort().restrict(gene=kind.uses_gene, image=kind.uses_image)
        splits = _saved_splits(wd, cfg, c)
        rows = []
        for i, seed, tcfg in _null_fits(cfg, base):
            if console:
                console.print(f"[bold]ablate {cfg.name}[/]: label permutation {i + 1}/{cfg.permutations}")
            labels = with_variant(c, ("permuted-labels", seed), splits, cfg.missing)  # within folds
            oof = oof_only(labels, splits, tcfg, progress=False, workdir=wd,
                           source=source(("permuted-labels", seed)))
            rows.append({"permutation": i, "seed": seed, "run": base.run, "scheme": NULL_SCHEME,
                         **{m: pooled_metrics(oof, classes)[m] for m in NULL_METRICS}})
        table = pl.DataFrame(rows)
    real = pooled_metrics(oofs[base.label], classes)
    out: dict[str, Any] = {**{k: v for k, v in meta.items() if k != "params"}, "metrics": {},
                           "n_patients": int(oofs[base.label]["patient_id"].n_unique())}
    for m in NULL_METRICS:
        v = table[m].to_numpy()
        out["metrics"][m] = {"real": real[m], "null_mean": float(np.nanmean(v)),
                             "null_q95": float(np.nanquantile(v, 0.95)), "p": empirical_p(real[m], v)}
    return out, table


# --------------------------------------------------------------------------- checks
def check_identical_splits(wd: Workdir, cfg: AblateConfig | None, runs: list[str]) -> str:
    """Every run's out-of-fold fold numbers must equal the saved split; returns its sha256."""
    from brcatool.splits import load_splits

    by = cfg.split if cfg is not None else "patient"
    splits = load_splits(wd.require(splits_path(wd, by), made_by="train"))
    if cfg is not None:
        splits = splits.head(min(cfg.repeats, splits.repeats))
    pos = {p: i for i, p in enumerate(splits.patient_ids)}
    for run in runs:
        oof = artifacts.read_parquet(wd.run_dir(run) / "oof.parquet", schema="oof", made_by="train")
        for pid, r, k in oof.select("patient_id", "repeat", "fold").iter_rows():
            if pid not in pos or int(r) >= splits.repeats or splits.fold[int(r), pos[pid]] != int(k):
                raise ArtifactError(f"run {run!r} puts patient {pid} in another fold than {splits.path.name}",
                                    path=wd.run_dir(run), fix="re-run the ablation with --overwrite")
    return splits.sha256()


def best_unimodal(specs: list[ModelSpec], scored: dict[str, Any]) -> str | None:
    """The unimodal model with the highest pooled PR-AUC (then ROC-AUC) on the common patients."""
    cands = [s.label for s in specs if s.kind == "model" and s.fusion in UNIMODAL]

    def score(label: str) -> tuple[float, float]:
        m = scored[label].pooled
        return tuple(-math.inf if not np.isfinite(m[k]) else m[k] for k in ("pr_auc", "roc_auc"))

    return max(cands, key=score) if cands else None
