"""Benchmark `train`: 5-fold CV of every fusion on a TCGA-sized synthetic cohort, on CPU.

1,000 patients x 35 patches x 2,048-d features (2 views) and 2,000 genes, written once by
``make_prepared_workdir`` and cached under ``bench-work/train``. Prints, per fusion, the wall time
of ``run_train`` with the default settings (loading included) and its OOF ROC-AUC, next to the raw
limits measured in the same run: loading the feature store, and one bare forward+backward epoch
(the per-patch projection alone, and the whole concat model). Target: all five < 5 min on 2 cores.
Usage: ``python benchmarks/bench_train.py [FUSION ...]``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from _common import Clock  # benchmarks/ is on sys.path when run as a script

PATIENTS, PATCHES, DIM, GENES = 1_000, 35, 2_048, 2_000
ROOT = Path(__file__).resolve().parent.parent / "bench-work" / "train"


def prepare() -> Path:
    from brcatool.synth import make_prepared_workdir

    done = ROOT / ".complete"
    if not done.exists():
        import shutil

        shutil.rmtree(ROOT, ignore_errors=True)
        with Clock() as c:
            make_prepared_workdir(ROOT, patients=PATIENTS, patches=PATCHES, dim=DIM, genes=GENES, views=2,
                                  gene_signal=0.1, image_signal=0.3, seed=0)
        done.touch()
        print(f"made the cohort in {c}")
    return ROOT


def raw_limits(root: Path) -> None:
    import torch

    from brcatool.cohort import load_cohort
    from brcatool.devices import cpu_has_bf16
    from brcatool.models import ModelConfig, build_model
    from brcatool.training import Batcher, TrainConfig, is_big
    from brcatool.training.batching import _forward
    from brcatool.training.stage import _threads

    with Clock() as c:
        cohort = load_cohort(root)
    print(f"load cohort (features {cohort.features.nbytes / 2**20:.0f} MiB float16): {c}")
    cfg = TrainConfig()
    torch.set_num_threads(_threads(cohort, cfg, torch.get_num_threads()))
    amp = is_big(cohort, cfg) and cpu_has_bf16()  # what run_train does
    print(f"torch threads {torch.get_num_threads()}, bf16 autocast on CPU: {amp}")
    n_train = int(PATIENTS * 0.8 * (1 - cfg.val_frac))
    idx = np.arange(n_train)
    proj = torch.nn.Linear(DIM, cfg.hidden)
    x = torch.from_numpy(cohort.features[:n_train, 0])
    with Clock() as c:
        for s in range(0, n_train, cfg.batch_size):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                y = proj(x[s:s + cfg.batch_size].float())
            y.float().sum().backward()
    print(f"raw limit, projection {DIM}->{cfg.hidden} fwd+bwd over {n_train} patients x {PATCHES}: {c}")
    expr = np.zeros((cohort.n, GENES), dtype=np.float32)
    model = build_model(ModelConfig(fusion="concat", n_genes=GENES, feat_dim=DIM, hidden=cfg.hidden))
    opt = torch.optim.AdamW(model.parameters())
    batcher = Batcher(cohort, expr, gene=True, image=True, device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    with Clock() as c:
        for s in range(0, n_train, cfg.batch_size):
            b = batcher.batch(idx[s:s + cfg.batch_size], generator=gen)
            loss = _forward(model, b, torch.device("cpu"), amp)["logits"].float().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    print(f"one bare training epoch of concat (view sampling, cast, fwd+bwd, step): {c}")


def main() -> None:
    import polars as pl

    from brcatool.training import TrainConfig, run_train

    fusions = sys.argv[1:] or ["gene", "image", "concat", "late", "xattn"]
    print(f"train benchmark: {PATIENTS} patients x {PATCHES} patches x {DIM}-d, {GENES} genes; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    root = prepare()
    raw_limits(root)
    total = 0.0
    for fusion in fusions:
        with Clock() as c:
            res = run_train(root, TrainConfig(fusion=fusion, name=f"bench-{fusion}", device="cpu",
                                              overwrite=True), progress=False)
        total += c.wall
        epochs = pl.read_csv(res.run_dir / "epochs.csv").height
        print(f"{fusion:>7}: 5-fold train {c}, {epochs} epochs in all "
              f"({c.wall / epochs:.2f} s/epoch), OOF ROC-AUC {res.metrics['roc_auc']:.3f}")
    print(f"all fusions: {total:.1f} s (target < 300 s); load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
