"""Benchmark scale-out: the same tile/embed units serially, as 2 concurrent shards, on `--dask local:2`.

Makes (once, cached under bench-work/scale/) a synthetic cohort of ~20 slides with the synth
factory, then runs each stage three ways, each as real `brcatool` processes on a fresh workdir:
- serial: one process (`--workers 1`);
- shards: `--shard 1/2` and `--shard 2/2` started together (the last to finish merges);
- dask: `--dask local:2` (a LocalCluster of 2 single-threaded worker processes).
Repeats are interleaved (serial, shards, dask, serial, ...) so a busy machine hurts every mode alike;
prints min/median/max wall seconds, the 1-minute load average before each run, the speed-up of
the median over serial, and the scheduler overhead per slide: (wall x ways - the slides' own
work) / slides, the work being the per-slide seconds tile records (embed: the seconds of the units
the run executed; not known for embed shards, printed n/a), i.e. what a run spends per slide on
anything else (process and cluster start-up, imports, model loading per worker, scheduling,
merging, idle workers at the end). Serial runs use every core as usual; each process of the 2-way
modes runs one thread (OMP_NUM_THREADS=1).

Usage: python benchmarks/bench_scale.py [--slides 20] [--repeats 3] [--stages tile,embed]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _common import interleave, report_ratio  # benchmarks/ is on sys.path when run as a script

BRCATOOL = [sys.executable, "-m", "brcatool"]
MODES = ("serial", "shards", "dask")


def make_cohort(root: Path, slides: int, size: int):
    from brcatool.synth import make_cohort as synth

    out = root / f"cohort-{slides}-{size}"
    if not (out / "slides").is_dir():
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        synth(out, patients=slides, slides_per_patient=(1, 1), slide_size=(size, size * 3 // 4), genes=60,
              seed=13, progress=False)
        print(f"made {slides} slides of {size} px in {time.perf_counter() - t0:.0f} s under {out}")
    return out / "slides"


CPU: dict[str, list[float]] = {}  # mode -> CPU seconds (user + sys) of each run's processes


def _cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # every waited-for descendant, workers included
    return r.ru_utime + r.ru_stime


def _run(cmds: list[list[str]], env: dict[str, str], mode: str = "") -> float:
    c0, t0 = _cpu(), time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"failed ({p.returncode}): {' '.join(cmds[procs.index(p)])}\n{err[-2000:]}")
    wall = time.perf_counter() - t0
    CPU.setdefault(mode, []).append(_cpu() - c0)
    return wall


def _commands(stage: str, mode: str, args: list[str]) -> list[list[str]]:
    base = [*BRCATOOL, stage, *args, "-q"]
    if mode == "serial":
        return [base]
    if mode == "shards":
        return [[*base, "--shard", f"{k}/2"] for k in (1, 2)]
    return [[*base, "--dask", "local:2"]]


def unit_seconds(stage: str, work: Path) -> float:
    """Sum of the per-slide work as the stage recorded it."""
    import polars as pl

    if stage == "tile":
        return float(pl.read_parquet(work / "slides.parquet")["seconds"].sum())
    import json

    man = json.loads(next((work / "features").glob("*/manifest.json")).read_text())
    return float(man.get("runtime", {}).get("unit_seconds", 0.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=20)
    ap.add_argument("--size", type=int, default=4096, help="slide width in px (height = 3/4)")
    ap.add_argument("--patches", type=int, default=50, help="tile --patches per patient (one slide each)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stages", default="tile,embed")
    ap.add_argument("--workdir", type=Path, default=Path("bench-work/scale"))
    opts = ap.parse_args()
    root = opts.workdir.resolve()
    slides = make_cohort(root, opts.slides, opts.size)
    # serial runs use every core as usual; each process of a 2-way mode runs one thread
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}
    tiled = root / "tiled"  # embed's input, made once
    tile_args = [str(slides), "-n", str(opts.patches), "--patch-size", "224"]
    stages = [s for s in opts.stages.split(",") if s]
    print(f"{opts.slides} slides of {opts.size} px, {os.cpu_count()} CPUs, "
          f"repeats interleaved x{opts.repeats}")
    for stage in stages:
        if stage == "embed" and not (tiled / "patches.parquet").is_file():
            _run(_commands("tile", "serial", [*tile_args, "-w", str(tiled)]), dict(os.environ))
        work_s: dict[str, list[float]] = {m: [] for m in MODES}

        def case(mode: str, stage: str = stage, work_s: dict = work_s) -> Callable[[], float]:
            def run() -> float:
                work = root / f"{stage}-{mode}"
                shutil.rmtree(work, ignore_errors=True)
                if stage == "tile":
                    args = [*tile_args, "-w", str(work)]
                else:
                    shutil.copytree(tiled, work, ignore=shutil.ignore_patterns("features"))
                    args = ["-w", str(work), "--encoder", "resnet18", "--weights", "random",
                            "--device", "cpu", "--precision", "fp32", "--num-workers", "0"]
                env = dict(os.environ) if mode == "serial" else one_thread
                wall = _run(_commands(stage, mode, args), env, f"{stage}-{mode}")
                work_s[mode].append(unit_seconds(stage, work))
                return wall
            return run

        res = interleave({mode: case(mode) for mode in MODES}, opts.repeats, warmup=0, verbose=False)
        ref = res["serial"].median
        # the slides' own work, as the run recorded it (tile: every slide's seconds; embed: the
        # seconds of the units this process ran, so not known for shards, whose last one merges)
        print(f"\n{stage}: wall seconds min / median / max, speed-up of the median, overhead per slide, "
              "CPU seconds (median) and cores busy on average")
        for mode in MODES:
            ways = 1 if mode == "serial" else 2
            over = [(w * ways - u) / opts.slides for w, u in zip(res[mode].values, work_s[mode], strict=True)]
            shown = "   n/a" if stage == "embed" and mode == "shards" else f"{statistics.median(over):6.3f}"
            cpu = statistics.median(CPU[f"{stage}-{mode}"])
            print(f"  {res[mode].line()}   x{ref / res[mode].median:4.2f}   {shown} s/slide   "
                  f"CPU {cpu:6.1f} s   {cpu / res[mode].median:4.2f} cores")
        # a serial run that already keeps c cores busy leaves at most (cores / c) to gain from more
        # processes on the same cores, and less when the processes add work of their own
        busy = statistics.median(CPU[f"{stage}-serial"]) / ref
        cores = os.cpu_count() or 1
        print(f"  ceiling on {cores} cores: the serial run keeps {busy:.2f} cores busy, "
              f"so x{cores / busy:.2f} "
              "at most from any split of the same work")
        report_ratio(f"{stage} speed-up, 2 shards over serial (wall)", res["serial"], res["shards"],
                     target=1.7 if stage == "tile" else None, at_most=False)


if __name__ == "__main__":
    main()
