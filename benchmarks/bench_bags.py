"""Peak memory of `train` on full-slide bags: ragged (memory-mapped, --bag-size) vs the dense array.

Makes (once, cached under bench-work/bags/) a prepared workdir with the synth factory: P patients x
N patches x D-dim float16 features (1 view), then trains an image-only ABMIL model for one epoch
on 2 folds in a fresh process per mode and prints that process's peak RSS (ru_maxrss) and time:
- ragged: `load_cohort(ragged=True)` + `--bag-size K` (reads only the K drawn patches per step);
- dense: the padded (P, 1, N, D) array in memory (skipped with --no-dense or when it would not fit).
The issue's size is 1,000 x 5,000 x 1,024 (10 GB of features); the default is scaled down to 250
patients (2.5 GB) so it runs on a laptop; the ragged peak does not grow with P (it is the model,
one batch of K patches and the offsets), the dense one grows linearly.

Usage: python benchmarks/bench_bags.py [--patients 250] [--patches 5000] [--dim 1024] [--bag-size 512]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
from brcatool.cohort import load_cohort
from brcatool.training import TrainConfig, run_train
wd, mode, bag = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
cohort = load_cohort(wd, ragged=(mode == "ragged"), expression=False)
t1 = time.perf_counter()
cfg = TrainConfig(fusion="image", aggregator="abmil", epochs=1, folds=2, batch_size=32, hidden=64,
                  device="cpu", bag_size=bag, name=f"bench-{mode}", overwrite=True)
run_train(wd, cfg, progress=False, cohort=cohort)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
print(json.dumps({"peak_gib": peak, "load_s": t1 - t0, "train_s": time.perf_counter() - t1}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=250)
    ap.add_argument("--patches", type=int, default=5000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--bag-size", type=int, default=512)
    ap.add_argument("--no-dense", action="store_true")
    ap.add_argument("--workdir", type=Path, default=Path("bench-work/bags"))
    opts = ap.parse_args()
    from brcatool.synth import make_prepared_workdir

    wd = (opts.workdir / f"p{opts.patients}-n{opts.patches}-d{opts.dim}").resolve()
    gib = opts.patients * opts.patches * opts.dim * 2 / 2**30
    if not (wd / "labels.parquet").is_file():
        t0 = time.perf_counter()
        make_prepared_workdir(wd, patients=opts.patients, patches=opts.patches, dim=opts.dim, views=1,
                              genes=40, seed=0)
        print(f"made {opts.patients} x {opts.patches} x {opts.dim} features ({gib:.1f} GiB float16) "
              f"in {time.perf_counter() - t0:.0f} s")
    print(f"{opts.patients} patients x {opts.patches} patches x {opts.dim}-d = {gib:.2f} GiB of "
          f"features; --bag-size {opts.bag_size}, 1 epoch, 2 folds, ABMIL, CPU")
    for mode in ("ragged", "dense"):
        if mode == "dense" and opts.no_dense:
            continue
        out = subprocess.run([sys.executable, "-c", CHILD, str(wd), mode, str(opts.bag_size)],
                             capture_output=True, text=True)
        if out.returncode:
            why = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode
            print(f"  {mode:<6} failed: {why}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {mode:<6} peak RSS {r['peak_gib']:5.2f} GiB   load {r['load_s']:6.1f} s   "
              f"train {r['train_s']:6.1f} s")


if __name__ == "__main__":
    main()
