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
    epochs: int = 30
    fusion: str = "xattn"
    bootstrap: int = 500
    seed: int = 0


@dataclass
class DemoResult:
    workdir: Path
    results: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def run_demo(workdir: Path | Workdir, cfg: DemoConfig | None = None, *, progress: bool = True,
             on_stage: Callable[[str, Any], None] | None = None) -> DemoResult:
    """synth -> tile -> embed -> prep-expr -> train -> evaluate -> ablate, resuming what exists."""
    from brcatool.ablation import AblateConfig, run_ablate
    from brcatool.embedding import EmbedConfig, run_embed
    from brcatool.evaluation import EvaluateConfig, run_evaluate
    from brcatool.expression import PrepExprConfig, run_prep_expr
    from brcatool.synth import make_cohort
    from brcatool.tiling import TileConfig, run_tile
    from brcatool.training import TrainConfig, run_train

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
    stage("tile", lambda: run_tile(wd, TileConfig(slides=[str(cohort_dir / "slides")], patches=cfg.patches,
                                                  seed=cfg.seed, workers=2), progress=progress))
    stage("embed", lambda: run_embed(wd, EmbedConfig(encoder=cfg.encoder, weights=cfg.weights,
                                                     seed=cfg.seed), progress=progress))
    stage("prep-expr", lambda: run_prep_expr(
        wd, PrepExprConfig(expression=cohort_dir / "expression.tsv", clinical=cohort_dir / "clinical.tsv",
                           seed=cfg.seed), progress=progress))
    train = stage("train", lambda: run_train(
        wd, TrainConfig(fusion=cfg.fusion, folds=cfg.folds, epochs=cfg.epochs, seed=cfg.seed,
                        name=f"demo-{cfg.fusion}"), progress=progress))
    stage("evaluate", lambda: run_evaluate(
        wd, EvaluateConfig(run=train.name, bootstrap=cfg.bootstrap, heatmaps=True, seed=cfg.seed),
        progress=progress))
    stage("ablate", lambda: run_ablate(
        wd, AblateConfig(folds=cfg.folds, epochs=cfg.epochs, bootstrap=cfg.bootstrap, seed=cfg.seed,
                         sanity=True, name="demo"), progress=progress))
    return out
