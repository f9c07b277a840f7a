"""Benchmark `brcatool tile` against the floor of its own work, measured in the same run.

Five slides, made once and cached under ``bench-work/tile/slides/``: three synthetic 20,480² px
pyramidal JPEG TIFFs (``brcatool.synth``), the real Aperio file of the test data (``small.svs``,
16 x 16 px: all fixed cost) and a synthetic Aperio-style SVS whose truth mask is known
(``known-mask.truth.png``, one px per 16 level-0 px; the share of tile's patches on true tissue is
printed as a check).

The floor of ``tile --patches 35`` on a slide is what any tool must do: open it, read a thumbnail
(the coarsest level whose long side is >= 1,024 px, as one ``read_region``), an Otsu threshold of
its saturation, and ``read_region`` of the 35 patches tile chose (the same coordinates); the floor
process also pays its imports (numpy, cv2, openslide). Rounds are interleaved (``_common``):
1. per slide, in this process: ``run_tile`` of one slide vs the floor of that slide;
   target: sum over the five slides <= 1.2 x the floor's (per-slide ratios printed too);
2. whole processes: ``python -m brcatool tile <5 slides> --patches 35 --quiet`` vs the floor
   process on the same slides, both with bytecode caches (as installed); target <= 1.3 x;
3. ``tile --sampling all`` on a 20,480² slide vs serial ``read_region`` of the same coordinates
   (converted to numpy); target: read rate >= 0.9 x raw;
4. where the time goes: wall ms per run of tile's phases on one slide, and the CPU ms per patch of
   each step of ``--sampling all`` (read, RGBA -> RGB, tile's own read, Blosc encode, the store write).

Usage: python benchmarks/bench_tile.py [--repeats 5] [--workdir bench-work/tile] [--parts 1,2,3,4]
       python benchmarks/bench_tile.py --floor COORDS.json   (the floor process itself)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATCHES = 35


# --------------------------------------------------------------------------- the floor
def floor_slide(path: str, coords: list[list[int]], size: int, level: int) -> int:
    """Open, thumbnail, Otsu, read the given patches; returns the number of tissue px (used)."""
    import cv2
    import numpy as np
    import openslide

    s = openslide.OpenSlide(path)
    long0 = max(s.dimensions)
    lv = max((i for i, (w, h) in enumerate(s.level_dimensions) if max(w, h) >= min(1024, long0)),
             key=lambda i: s.level_downsamples[i])
    thumb = np.asarray(s.read_region((0, 0), lv, s.level_dimensions[lv]))
    rgb = cv2.cvtColor(thumb, cv2.COLOR_RGBA2RGB)
    sat = np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1])
    _, mask = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    for x, y in coords:
        np.asarray(s.read_region((x, y), level, (size, size)))
    s.close()
    return int(cv2.countNonZero(mask))


def floor_main(coords_file: str) -> None:
    for item in json.loads(Path(coords_file).read_text()):
        floor_slide(item["path"], item["xy"], item["size"], item["level"])


# --------------------------------------------------------------------------- slides
def make_slides(root: Path) -> list[Path]:
    from brcatool.artifacts import atomic_path
    from brcatool.synth.slides import SlideSpec, write_slide

    root.mkdir(parents=True, exist_ok=True)
    specs = [("synth-1.tiff", SlideSpec(20480, 20480, "LumB", (2024,))),
             ("synth-2.tiff", SlideSpec(20480, 20480, "Basal", (2025,))),
             ("synth-3.tiff", SlideSpec(20480, 20480, "LumA", (2026,))),
             ("known-mask.svs", SlideSpec(12288, 10240, "Her2", (2027,)))]
    out = []
    for name, spec in specs:
        path = root / name
        if not path.exists():
            import cv2

            t0 = time.perf_counter()
            with atomic_path(path) as tmp:
                _, truth = write_slide(tmp, spec, svs=name.endswith(".svs"))
            cv2.imwrite(str(root / f"{path.stem}.truth.png"), truth)
            print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s")
        out.append(path)
    aperio = root / "aperio-small.svs"
    if not aperio.exists():
        shutil.copy(ROOT / "tests" / "data" / "small.svs", aperio)
    return [*out[:3], aperio, out[3]]


def tile_in_process(slides: list[Path], work: Path, **options) -> object:
    from brcatool.tiling import TileConfig, run_tile

    shutil.rmtree(work, ignore_errors=True)
    return run_tile(work, TileConfig(slides=[str(s) for s in slides], **options), progress=False)


def tile_case(slides: list[Path], work: Path, **options) -> object:
    """An ``interleave`` case: seconds of ``run_tile`` into a fresh workdir (its removal untimed)."""
    from brcatool.tiling import TileConfig, run_tile

    def run() -> float:
        shutil.rmtree(work, ignore_errors=True)
        t0 = time.perf_counter()
        run_tile(work, TileConfig(slides=[str(s) for s in slides], **options), progress=False)
        return time.perf_counter() - t0

    return run


def chosen(work: Path, slides: list[Path]) -> list[dict]:
    """Per slide, the coordinates tile chose (what the floor reads)."""
    import polars as pl

    df = pl.read_parquet(work / "patches.parquet")
    out = []
    for s in slides:
        rows = df.filter(pl.col("slide_id") == s.stem)
        out.append({"path": str(s), "xy": rows.select("x", "y").rows(),
                    "size": int(rows["size"][0]) if rows.height else 256,
                    "level": int(rows["level"][0]) if rows.height else 0})
    return out


def known_mask_check(work: Path, slide: Path) -> str:
    import cv2
    import polars as pl

    truth = cv2.imread(str(slide.with_name(f"{slide.stem}.truth.png")), cv2.IMREAD_GRAYSCALE) > 0
    df = pl.read_parquet(work / "patches.parquet").filter(pl.col("slide_id") == slide.stem)
    on = [truth[y // 16:(y + s) // 16, x // 16:(x + s) // 16].mean() >= 0.5
          for x, y, s in df.select("x", "y", "size").iter_rows()]
    return f"{sum(on)} of {len(on)} patches of {slide.name} lie on true tissue (>= half their area)"


# --------------------------------------------------------------------------- the three parts
def part_per_slide(slides: list[Path], base: Path, repeats: int) -> None:
    from _common import Series, interleave, report_ratio, timed

    from brcatool.tiling import TileConfig  # noqa: F401 - imports warm: this part times the work

    tiled = tile_in_process(slides, base / "ref", patches=PATCHES)
    coords = {c["path"]: c for c in chosen(base / "ref", slides)}
    print(known_mask_check(base / "ref", slides[4]))
    for s in slides:  # warm the page cache and the lazy imports
        floor_slide(str(s), coords[str(s)]["xy"], coords[str(s)]["size"], coords[str(s)]["level"])
    cases = {}
    for i, s in enumerate(slides):
        c = coords[str(s)]
        cases[f"tile {s.name}"] = tile_case([s], base / f"one-{i}", patches=PATCHES)
        cases[f"floor {s.name}"] = timed(lambda c=c: floor_slide(c["path"], c["xy"], c["size"], c["level"]))
    print(f"\n1. per slide, in process ({repeats} interleaved rounds; {tiled.n_patches} patches in all)")
    res = interleave(cases, repeats, verbose=False)
    tile_sum, floor_sum = Series("tile, sum of 5 slides"), Series("floor, sum of 5 slides")
    for r in range(repeats):
        tile_sum.values.append(sum(res[f"tile {s.name}"].values[r] for s in slides))
        floor_sum.values.append(sum(res[f"floor {s.name}"].values[r] for s in slides))
        tile_sum.loads.append(res[f"tile {slides[0].name}"].loads[r])
        floor_sum.loads.append(res[f"floor {slides[0].name}"].loads[r])
    for s in slides:
        print("  " + res[f"tile {s.name}"].line())
        print("  " + res[f"floor {s.name}"].line())
        report_ratio(f"tile --patches 35 / floor, {s.name} (per slide)", res[f"tile {s.name}"],
                     res[f"floor {s.name}"], target=1.2)
    print("  " + tile_sum.line() + "\n  " + floor_sum.line())
    report_ratio("tile --patches 35 / floor, per slide (sum of the 5 slides)", tile_sum, floor_sum,
                 target=1.2)
    print("  CPU ms per slide (this process's CPU time, threads included; median of 3 runs):")
    for i, s in enumerate(slides):
        c = coords[str(s)]
        tile_cpu = cpu_ms(lambda s=s, i=i: tile_in_process([s], base / f"one-{i}", patches=PATCHES))
        floor_cpu = cpu_ms(lambda c=c: floor_slide(c["path"], c["xy"], c["size"], c["level"]))
        print(f"  {s.name:<20} tile {tile_cpu:6.0f}   floor {floor_cpu:6.0f}")


def cpu_ms(fn, runs: int = 3) -> float:  # noqa: ANN001 - median CPU ms of ``runs`` calls
    import statistics

    from _common import Clock

    out = []
    for _ in range(runs):
        with Clock() as clock:
            fn()
        out.append(clock.cpu * 1000)
    return statistics.median(out)


def part_process(slides: list[Path], base: Path, repeats: int) -> None:
    from _common import interleave, report_ratio, timed

    tile_in_process(slides, base / "ref", patches=PATCHES)
    coords_file = base / "floor-coords.json"
    coords_file.write_text(json.dumps(chosen(base / "ref", slides)))
    # Both processes run as an installed copy does: with bytecode caches (pip compiles at install;
    # a source checkout writes __pycache__). This machine sets PYTHONDONTWRITEBYTECODE, which would
    # make every tile process compile brcatool's sources anew (~70 ms); the caches go under the
    # bench workdir (PYTHONPYCACHEPREFIX), written by the unrecorded warm-up round.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(base / "pycache")

    def run(cmd: list[str]) -> None:  # cwd: not the repository, so PYTHONPATH picks the code measured
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, cwd=base)

    work = base / "proc"
    tile_cmd = [sys.executable, "-m", "brcatool", "tile", *map(str, slides), "--patches", str(PATCHES),
                "--quiet", "--workdir", str(work)]
    def tile_process() -> float:
        shutil.rmtree(work, ignore_errors=True)
        return timed(lambda: run(tile_cmd))()

    cases = {"tile process": tile_process,
             "floor process": timed(lambda: run([sys.executable, __file__, "--floor", str(coords_file)])),
             "python -c pass": timed(lambda: run([sys.executable, "-c", "pass"]))}
    print(f"\n2. whole processes, 5 slides ({repeats} interleaved rounds)")
    res = interleave(cases, repeats, verbose=False)
    for s in res.values():
        print("  " + s.line())
    report_ratio("tile --patches 35 process / floor process (5 slides)", res["tile process"],
                 res["floor process"], target=1.3)


def part_all(slide: Path, base: Path, repeats: int) -> None:
    import numpy as np
    import openslide
    import polars as pl
    from _common import Series, interleave, report_ratio, timed

    res0 = tile_in_process([slide], base / "all", sampling="all")
    df = pl.read_parquet(base / "all" / "patches.parquet")
    xy, size, level = df.select("x", "y").rows(), int(df["size"][0]), int(df["level"][0])

    def raw() -> None:
        s = openslide.OpenSlide(str(slide))
        for x, y in xy:
            np.asarray(s.read_region((x, y), level, (size, size)))
        s.close()

    print(f"\n3. tile --sampling all on {slide.name}: {res0.n_patches} patches ({repeats} interleaved "
          "rounds)")
    res = interleave({"tile --sampling all": tile_case([slide], base / "all", sampling="all"),
                      "raw read_region": timed(raw)}, repeats, verbose=False)
    n = len(xy)
    for s in res.values():
        rate = Series(s.name + " (patches/s)", [n / v for v in s.values], s.loads)
        print("  " + s.line() + "\n  " + rate.line("patches/s", "7.0f"))
    # rate ratio tile/raw = raw seconds / tile seconds
    report_ratio("tile --sampling all / raw read_region, read rate", res["raw read_region"],
                 res["tile --sampling all"], target=0.9, at_most=False)


def part_phases(slide: Path, base: Path, repeats: int) -> None:
    """Where a tile run's time goes (wall ms per run, functions wrapped with timers), and the CPU
    cost per patch of each step of ``--sampling all`` next to the raw read."""
    import functools
    import statistics
    from collections import defaultdict

    import numcodecs
    import numpy as np
    import openslide
    import polars as pl

    import brcatool.tile_slide as tile_slide
    import brcatool.tiling as tiling
    from brcatool import artifacts, slides, stores, zarr_io
    from brcatool.interop import geojson

    spent: dict[str, list[float]] = defaultdict(list)
    wrapped = [(tile_slide, "scan_slide"), (tile_slide, "extract_slide"), (tiling, "_merge"),
               (tiling, "_lock_all"), (tile_slide, "tissue_mask"), (tiling, "write_json"),
               (stores, "write_patch_batches"),
               (slides, "read_thumbnail"), (geojson, "write_tissue"), (zarr_io, "ensure_group")]
    saved = [(mod, name, getattr(mod, name)) for mod, name in wrapped]

    def timer(name: str, fn):  # noqa: ANN001, ANN202
        @functools.wraps(fn)
        def run(*a, **k):  # noqa: ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name].append(time.perf_counter() - t0)
        return run

    for mod, name, fn in saved:
        setattr(mod, name, timer(f"{mod.__name__.rsplit('.', 1)[-1]}.{name}", fn))
    try:
        case = tile_case([slide], base / "phases", patches=PATCHES)
        case()
        spent.clear()
        totals = [case() for _ in range(repeats)]
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)
    print(f"\n4. where tile --patches 35 on {slide.name} spends its time: wall ms per run, mean of "
          f"{repeats} (nested: scan_slide holds read_thumbnail, tissue_mask; extract_slide holds "
          f"write_patch_batches; write_tissue runs in the QC thread, beside extract_slide; load "
          f"{os.getloadavg()[0]:.1f})")
    print(f"  {'run_tile':<34}{statistics.median(totals) * 1000:8.1f} (median)")
    for name, values in sorted(spent.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {name:<34}{sum(values) / repeats * 1000:8.1f}")

    df = pl.read_parquet(base / "all" / "patches.parquet") if (base / "all").is_dir() else None
    if df is None:
        return
    xy = df.select("x", "y").rows()[:256]
    s = openslide.OpenSlide(str(slide))

    def cpu(fn) -> float:  # noqa: ANN001 - CPU ms per patch
        t0 = time.process_time()
        fn()
        return (time.process_time() - t0) / len(xy) * 1000

    images, arrays = [], []
    costs = {"read_region (PIL image)": cpu(lambda: images.extend(s.read_region((x, y), 0, (256, 256))
                                                                   for x, y in xy)),
             "np.asarray of it (raw pays it too)": cpu(lambda: arrays.extend(np.asarray(i) for i in images))}
    rgbs: list = []
    costs["to_rgb (RGBA -> RGB)"] = cpu(lambda: rgbs.extend(slides.to_rgb(a) for a in arrays))
    costs["slides.read_rgb (tile's read: no PIL)"] = cpu(lambda: [slides.read_rgb(s, x, y, 0, 256, 256)
                                                                 for x, y in xy])
    codec = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)  # = stores' codec
    costs["Blosc-LZ4 encode"] = cpu(lambda: [codec.encode(r) for r in rgbs])
    wd = artifacts.Workdir(base / "phases-store")
    shutil.rmtree(wd.root, ignore_errors=True)
    costs["stores.write_patches (encode + store)"] = cpu(
        lambda: stores.write_patches(wd, "x", np.stack(rgbs)))
    s.close()
    print(f"  CPU ms per patch over {len(xy)} patches of {slide.name} (load {os.getloadavg()[0]:.1f}):")
    for name, ms in costs.items():
        print(f"  {name:<40}{ms:6.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=Path("bench-work/tile"))
    ap.add_argument("--parts", default="1,2,3,4", help="which comparisons to run (4: where the time goes)")
    ap.add_argument("--floor", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.floor:
        floor_main(args.floor)
        return
    from _common import load

    import brcatool

    base = args.workdir.resolve()
    slides = make_slides(base / "slides")
    code = subprocess.run([sys.executable, "-c", "import brcatool; print(brcatool.__file__)"], cwd=base,
                          capture_output=True, text=True, check=True).stdout.strip()
    print(f"bench_tile: {os.cpu_count()} CPUs, load average {load():.1f} at the start; "
          f"slides: {', '.join(s.name for s in slides)}; code: {Path(brcatool.__file__).parent} "
          f"(subprocesses: {Path(code).parent})")
    parts = set(args.parts.split(","))
    if "1" in parts:
        part_per_slide(slides, base, args.repeats)
    if "2" in parts:
        part_process(slides, base, args.repeats)
    if "3" in parts:
        part_all(slides[0], base, max(3, args.repeats - 2))
    if "4" in parts:
        part_phases(slides[0], base, args.repeats)
    print(f"load average at the end: {load():.1f}")


if __name__ == "__main__":
    main()
