"""The whole pipeline on a synthetic cohort: what `brcatool demo` and `make demo` run.

Each stage is called through its library entry point exactly as the CLI would, so the demo
exercises the same code and artifacts as a shell-scripted run (see examples/run_all.sh).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brcatool.artifacts import Workdir


@dataclass
class DemoConfig:
    """Small enough for 2 CPU cores in a few minutes; every stage still does real work."""

    patients: int = 60
    patches: int = 8
    encoder: str = "resnet50"
    weights: str = "random"  # offline: no ImageNet download; the stage warns about it
    folds: int = 5
    # ~40 training patients make 1-2 optimiser steps per epoch: train longer than the defaults,
    # which are sized for TCGA-scale cohorts
    epochs: int = 60
    patience: int = 15
    fusion: str = "xattn"
    bootstrap: int = 500
    seed: int = 0
    overwrite: bool = False  # replace outputs of an earlier demo made with other parameters


@dataclass
class DemoResult:
    workdir: Path
    results: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def run_demo(workdir: Path | Workdir, cfg: DemoConfig | None = None, *, progress: bool = True,
             on_stage: Callable[[str, Any], None] | None = None) -> DemoResult:
    """synth -> tile -> embed -> prep-expr -> train -> evaluate -> ablate -> report, resuming what exists."""
    from brcatool.ablation import AblateConfig, run_ablate, run_name
    from brcatool.embedding import EmbedConfig, run_embed
    from brcatool.evaluation import EvaluateConfig, run_evaluate
    from brcatool.expression import PrepExprConfig, run_prep_expr
    from brcatool.report import ReportConfig, run_report
    from brcatool.synth import make_cohort
    from brcatool.tiling import TileConfig, run_tile
    from brcatool.training import run_train

    cfg = cfg or DemoConfig()
    wd = workdir if isinstance(workdir, Workdir) else Workdir(Path(workdir))
    cohort_dir = wd.root / "cohort"
    out = DemoResult(workdir=wd.root)

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        out.seconds[name] = time.perf_counter() - t0
        out.results[name] = result
        if on_stage is not None:
            on_stage(name, result)
        return result

    def synth() -> Any:
        truth = cohort_dir / "truth" / "truth.json"
        if truth.exists():  # finished before: the same seed gives the same bytes, keep it
            return None
        return make_cohort(cohort_dir, patients=cfg.patients, seed=cfg.seed, overwrite=True,
                           progress=progress)

    stage("synth", synth)
    seed, ow = cfg.seed, cfg.overwrite
    tile_cfg = TileConfig(slides=[str(cohort_dir / "slides")], patches=cfg.patches, seed=seed, workers=2,
                          overwrite=ow)
    stage("tile", lambda: run_tile(wd, tile_cfg, progress=progress))
    embed_cfg = EmbedConfig(encoder=cfg.encoder, weights=cfg.weights, seed=seed, overwrite=ow)
    stage("embed", lambda: run_embed(wd, embed_cfg, progress=progress))
    prep_cfg = PrepExprConfig(expression=cohort_dir / "expression.tsv",
                              clinical=cohort_dir / "clinical.tsv")
    stage("prep-expr", lambda: run_prep_expr(wd, prep_cfg, progress=progress, overwrite=ow))
    ablate_cfg = AblateConfig(folds=cfg.folds, epochs=cfg.epochs, patience=cfg.patience,
                              bootstrap=cfg.bootstrap, seed=seed, sanity=True, name="demo", overwrite=ow)
    # the train stage makes ablate's run of this fusion (same name and settings): ablate reuses it
    # and the evaluation below (same bootstrap and seed, more figures) instead of repeating them.
    # With --overwrite ablate re-makes its runs anyway: keep the demo's own run then, so ablate's
    # leaner evaluation does not replace the one with heatmaps.
    name = f"demo-{cfg.fusion}" if ow else run_name("demo", cfg.fusion)
    train_cfg = ablate_cfg.train_config(cfg.fusion, ablate_cfg.aggregators[0], name)
    train = stage("train", lambda: run_train(wd, train_cfg, progress=progress))
    eval_cfg = EvaluateConfig(run=train.name, bootstrap=cfg.bootstrap, heatmaps=True, seed=seed,
                              overwrite=ow)
    stage("evaluate", lambda: run_evaluate(wd, eval_cfg, progress=progress))
    stage("ablate", lambda: run_ablate(wd, ablate_cfg, progress=progress))
    stage("report", lambda: run_report(wd, ReportConfig()))  # always rewritten: it reads the above
    return out
