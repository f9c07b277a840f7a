"""The embed stage: patch store -> encoder features, one Zarr array per slide.

Encoders (registry, weights, stain/augment transforms) live in :mod:`brcatool.encoders`; this
module reads the patch store in batches, runs the encoder and writes features with a manifest
that records the weights' identity, so `train` can refuse to mix features. Augmented views are
computed here, once, so training never runs the encoder. ``run_embed`` is resumable per slide.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brcatool import artifacts, outputs, stores, zarr_io
from brcatool.artifacts import Workdir
from brcatool.devices import resolve_device, resolve_precision
from brcatool.embed_unit import EmbedJob, embed_unit, finished
from brcatool.encoders.augment import JITTER, Macenko
from brcatool.encoders.preprocess import plan_input
from brcatool.encoders.registry import get_encoder
from brcatool.encoders.runtime import default_batch
from brcatool.encoders.spec import EncoderSpec
from brcatool.encoders.weights import resolve_weights
from brcatool.errors import ArtifactError, BrcaError, InputError
from brcatool.executors import RunOptions, balanced_shards, make_executor
from brcatool.patch_readers import SlideBatches, SlideSource


# --------------------------------------------------------------------------- the stage
@dataclass
class EmbedConfig:
    """Options of `brcatool embed` (defaults match the CLI)."""

    encoder: str = "resnet50"
    weights: str = "imagenet"  # imagenet | imagenet:<ENUM MEMBER> | hf:ORG/NAME[/FILE] | random | PATH
    input_size: int | None = None  # None: the patch size (no resize); foundation models: their card's
    stain_norm: str = "none"  # none | macenko
    stain_ref: Path | None = None  # reference image; default: the most tissue-rich patch
    views: int = 1
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None  # None: 256 on CUDA, 32 on CPU (less for ViT-L/H/g, per encoder)
    num_workers: int | None = None  # None: min(8, CPUs) on CUDA, 1 on CPU (cores go to the CNN)
    shard: str | None = None  # "K/N": embed a balanced subset of the slides (Slurm arrays)
    dask: str | None = None  # Dask scheduler address or "local:N": one task per batch of slides
    merge: bool = False  # only write index.parquet and the manifest from the finished slides
    overwrite: bool = False


@dataclass
class EmbedResult:
    features_dir: Path
    encoder: str
    weights: str
    dim: int
    views: int
    device: str
    precision: str
    slides_embedded: int
    slides_skipped: int
    patches: int
    seconds: float
    patches_per_s: float  # model build excluded, worker start-up and first batch included
    steady_patches_per_s: float  # after the first batch arrived
    params: dict[str, Any] = field(default_factory=dict)
    pending: int = 0  # slides left to other shards/processes (index and manifest not written yet)
    took_over: int = 0  # stale slide locks taken over (their process had died)


@dataclass(frozen=True)
class _PatchIndex:
    segments: list[tuple[str, int]]  # (slide_id, n_patches) in table order
    patients: dict[str, str]  # slide -> patient
    patch_size: int
    reference: Callable[[], np.ndarray]  # reads the most-tissue patch (stain reference) on demand
    sources: dict[str, SlideSource] | None = None  # tile --no-pixels: where to read each slide
    target_mpp: float | None = None


def loader_defaults(device: str, cfg: EmbedConfig, spec: EncoderSpec | None = None) -> tuple[int, int]:
    """(batch size, DataLoader workers): the config's values, else the defaults for ``device``
    (and the encoder's size)."""
    bs = cfg.batch_size or default_batch(spec, device)
    workers = cfg.num_workers if cfg.num_workers is not None else (
        min(8, os.cpu_count() or 1) if device == "cuda" else 1)
    return bs, workers


def _segments(wd: Workdir) -> _PatchIndex:
    """The patch table and store, read once and checked against each other."""
    table = artifacts.read_parquet(wd.patches_table, schema="patches", made_by="tile")
    tile = artifacts.read_json(wd.stage_manifest("tile")) if wd.stage_manifest("tile").is_file() else {}
    if tile.get("params", {}).get("no_pixels"):
        return _slide_index(wd, table, float(tile["params"]["target_mpp"]))
    wd.require(wd.patches_zarr, made_by="tile")
    group = zarr_io.open_group(wd.patches_zarr, schema="patch-store")
    counts = table.group_by("slide_id", maintain_order=True).len()
    patients = dict(zip(table["slide_id"], table["patient_id"], strict=True))
    segments, sizes = [], set()
    for slide_id, n in counts.iter_rows():
        try:
            arr = stores.member(group, slide_id)
        except KeyError:
            raise ArtifactError(f"has no patches for slide {slide_id}", path=wd.patches_zarr,
                                fix="re-run `brcatool tile --overwrite`") from None
        if arr.shape[0] != n:
            raise ArtifactError(f"slide {slide_id} holds {arr.shape[0]} patches, patches.parquet "
                                f"lists {n}", path=wd.patches_zarr, fix="re-run `brcatool tile --overwrite`")
        sizes.add(tuple(arr.shape[1:3]))
        segments.append((slide_id, int(n)))
    if len(sizes) > 1:
        raise ArtifactError(f"patches of several sizes {sorted(sizes)}", path=wd.patches_zarr,
                            fix="tile again with one --patch-size")
    if not segments:
        raise ArtifactError("lists no patches", path=wd.patches_table,
                            fix="check `brcatool tile` found tissue (see slides.parquet)")

    def reference() -> np.ndarray:
        best = table.sort(["tissue_fraction", "slide_id", "patch_index"],
                          descending=[True, False, False]).row(0, named=True)
        return np.asarray(stores.member(group, best["slide_id"])[best["patch_index"]])

    return _PatchIndex(segments, patients, sizes.pop()[0], reference)


def _slide_index(wd: Workdir, table: Any, target_mpp: float) -> _PatchIndex:
    """After ``tile --no-pixels``: each slide's file, level-0 mpp and patch corners (patch order)."""
    slides_df = artifacts.read_parquet(wd.slides_table, schema="slides", made_by="tile")
    info = {r["slide_id"]: r for r in slides_df.iter_rows(named=True)}
    sizes = set(table["size"].unique().to_list())
    if len(sizes) > 1:
        raise ArtifactError(f"patches of several sizes {sorted(sizes)}", path=wd.patches_table,
                            fix="tile again with one --patch-size")
    if table.height == 0:
        raise ArtifactError("lists no patches", path=wd.patches_table,
                            fix="check `brcatool tile` found tissue (see slides.parquet)")
    segments, sources = [], {}
    for (sid,), part in table.group_by("slide_id", maintain_order=True):
        part = part.sort("patch_index")
        row = info[sid]
        sources[sid] = SlideSource(path=row["path"], mpp0=float(row["mpp"]),
                                   xy=part.select("x", "y").to_numpy().astype(np.int64),
                                   level=int(part["level"][0]), size=int(part["size"][0]))
        segments.append((sid, part.height))
    patients = dict(zip(table["slide_id"], table["patient_id"], strict=True))

    def reference() -> np.ndarray:
        best = table.sort(["tissue_fraction", "slide_id", "patch_index"],
                          descending=[True, False, False]).row(0, named=True)
        reader = SlideBatches(wd.root, [], 1, sources=sources, target_mpp=target_mpp)
        return reader.read(best["slide_id"], best["patch_index"], best["patch_index"] + 1)[0]

    return _PatchIndex(segments, patients, sizes.pop(), reference, sources, target_mpp)


def _stain(cfg: EmbedConfig, reference: Callable[[], np.ndarray]) -> Macenko | None:
    if cfg.stain_norm == "none":
        return None
    if cfg.stain_norm != "macenko":
        raise InputError(f"unknown stain normalisation {cfg.stain_norm!r}", fix="use none or macenko")
    if cfg.stain_ref is not None:
        import cv2

        img = cv2.imread(str(cfg.stain_ref), cv2.IMREAD_COLOR)
        if img is None:
            raise InputError("cannot read the stain reference image", path=cfg.stain_ref)
        return Macenko.fit(img[..., ::-1])
    return Macenko.fit(reference())


def _tile_params_hash(wd: Workdir) -> str | None:
    """The tile output's fingerprint (its content), else a hash of its parameters (older manifests)."""
    path = wd.stage_manifest("tile")
    if not path.is_file():
        return None
    man = artifacts.read_json(path)
    return man.get("fingerprint") or outputs.params_digest(man.get("params", {}))


def run_embed(workdir: Path | Workdir, cfg: EmbedConfig, *, progress: bool = True) -> EmbedResult:
    """Embed every slide of the patch store with ``cfg.encoder``; resume slides already done.

    Under the encoder's stage lock (a second run refuses with one line); debris of an interrupted
    run is removed first; ``--overwrite`` builds the new features beside the old ones and swaps
    them in only when the run succeeded (a bad weights file leaves the old features intact).
    """
    wd = workdir if isinstance(workdir, Workdir) else Workdir(Path(workdir))
    fdir = wd.features_dir(get_encoder(cfg.encoder).name)
    # shards run side by side under per-slide locks: each its own stage lock, and none of them
    # may clean up temporaries (they could be another shard's slide in flight)
    key = f"embed-{fdir.name}" + (f"-shard-{cfg.shard.replace('/', '-of-')}" if cfg.shard else "")
    with outputs.stage_lock(wd, key):
        for folder, finals in () if cfg.shard else (
                (fdir.parent, None), (fdir, None), (fdir / "features.zarr", None)):
            outputs.clean_debris(folder, finals)
        with outputs.replacing(wd, [fdir], enabled=cfg.overwrite and fdir.exists(), tag="embed") as swd:
            res = _embed(swd, cfg, progress=progress)
    return dataclasses.replace(res, features_dir=fdir)


def _embed(workdir: Path | Workdir, cfg: EmbedConfig, *, progress: bool = True) -> EmbedResult:
    from rich.console import Console

    from brcatool.config import write_yaml

    t0 = time.perf_counter()
    wd = workdir if isinstance(workdir, Workdir) else Workdir(Path(workdir))
    if not 1 <= cfg.views <= 64:
        raise InputError(f"--views must be between 1 and 64, got {cfg.views}")
    if cfg.batch_size is not None and not 1 <= cfg.batch_size <= 65536:
        raise InputError(f"--batch-size must be between 1 and 65536, got {cfg.batch_size}")
    if cfg.input_size is not None and not 16 <= cfg.input_size <= 4096:
        raise InputError(f"--input-size must be between 16 and 4096 px, got {cfg.input_size}")
    spec = get_encoder(cfg.encoder)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    index = _segments(wd)
    segments, patients, patch_size = index.segments, index.patients, index.patch_size
    weights = resolve_weights(spec, cfg.weights, seed=cfg.seed)
    stain = _stain(cfg, index.reference)
    plan = plan_input(spec, patch_size, cfg.input_size)
    input_size = plan.size
    params: dict[str, Any] = {
        "encoder": spec.name, "weights": weights.identity, "dim": spec.dim, "views": cfg.views,
        "input_size": input_size, "patch_size": patch_size,
        "normalisation": {"mean": list(spec.mean), "std": list(spec.std)},
        "stain_norm": None if stain is None else {
            "method": "macenko", "he": np.round(stain.he, 6).tolist(),
            "max_c": np.round(stain.max_c, 6).tolist()},
        "augment": {**JITTER, "dihedral": True, "seed": cfg.seed} if cfg.views > 1 else None,
        "dtype": "float16", "precision": precision,
        "tile": _tile_params_hash(wd),  # re-tiled with other settings -> these features are stale
    }
    if spec.family != "torchvision":  # (torchvision encoders: a resize to input_size, as always)
        params.update(preprocess=plan.describe(), output=spec.output)
    fdir = wd.features_dir(spec.name)
    manifest_path = fdir / "manifest.json"
    artifacts.check_params(manifest_path, params, overwrite=cfg.overwrite,
                           what=f"features of encoder {spec.name!r}")
    manifest = artifacts.Manifest("embed", params)
    manifest.add_input(wd.patches_table)
    manifest.write(manifest_path, status="running")
    if weights.source == "random":
        Console(stderr=True).print(
            f"[bold yellow]warning:[/] {spec.name} uses RANDOM weights (seed {cfg.seed}); features "
            "are only good for tests and demos. Use --weights imagenet, hf:ORG/NAME or PATH.")

    phash = outputs.params_digest(params)
    opts = _run_options(cfg)
    bs, workers = loader_defaults(device, cfg, spec)
    job = EmbedJob(wd=wd, encoder=spec.name, weights=weights, plan=plan, seed=cfg.seed,
                   device=device, precision=precision, batch_size=bs, num_workers=workers,
                   views=cfg.views, stain=stain, phash=phash, sources=index.sources,
                   target_mpp=index.target_mpp, progress=progress and opts.executor_name() == "serial")
    done = finished(wd, spec.name, phash, segments, cfg.views, spec.dim)
    mine = segments
    if opts.shard_spec is not None:
        take = set(opts.shard_spec.take({s: n for s, n in segments}))
        mine = [(s, n) for s, n in segments if s in take]
    todo = [] if opts.merge else [(s, n) for s, n in mine if s not in done]
    stats = _dispatch(job, todo, opts, progress)
    total, loop_seconds = stats["patches"], stats["loop"]
    first_n, first_at = stats["first"]
    steady = ((total - first_n) / (loop_seconds - first_at)
              if total > first_n and loop_seconds > first_at else 0.0)
    pending = len(segments) - len(finished(wd, spec.name, phash, segments, cfg.views, spec.dim))
    if stats["failed"]:
        sid, err = next(iter(stats["failed"].items()))
        fix = next((f for f in stats["fixes"] if f), "fix the cause")
        raise ArtifactError(f"{len(stats['failed'])} slide(s) failed to embed (first: {sid}: {err})",
                            path=fdir, fix=f"{fix}, then re-run the same command (finished slides are kept)")
    if pending:
        if opts.merge:
            raise ArtifactError(f"{pending} slide(s) are not embedded yet", path=fdir,
                                fix="run the remaining shards (or embed without --shard) first")
        rate = total / loop_seconds if total and loop_seconds > 0 else 0.0
        return EmbedResult(fdir, spec.name, weights.identity, spec.dim, cfg.views, device, precision,
                           len(todo), len(done), total, time.perf_counter() - t0, rate, steady, params,
                           pending=pending, took_over=len(stats["took_over"]))

    import polars as pl

    index = pl.DataFrame({
        "slide_id": [s for s, _ in segments], "patient_id": [patients[s] for s, _ in segments],
        "n_patches": [n for _, n in segments], "views": [cfg.views] * len(segments),
        "dim": [spec.dim] * len(segments)}, schema={"slide_id": pl.Utf8, "patient_id": pl.Utf8,
                                                    "n_patches": pl.Int64, "views": pl.Int64,
                                                    "dim": pl.Int64})
    artifacts.write_parquet(index, wd.features_index(spec.name), schema="features")
    write_yaml(cfg, fdir / "config.yaml")
    seconds = time.perf_counter() - t0
    rate = total / loop_seconds if total and loop_seconds > 0 else 0.0
    manifest.write(manifest_path, status="complete",
                   counts={"slides": len(segments), "slides_embedded": len(todo),
                           "slides_skipped": len(done), "patches": sum(n for _, n in segments),
                           "patches_embedded": total},
                   weights_detail={"source": weights.source, "file": weights.file,
                                   "sha256": weights.sha256},
                   runtime={"device": device, "batch_size": bs, "num_workers": workers,
                            "executor": opts.executor_name(), "unit_seconds": round(stats["unit_seconds"], 3),
                            "seconds": round(seconds, 3), "patches_per_s": round(rate, 2),
                            "steady_patches_per_s": round(steady, 2)},
                   consumed=[outputs.consumed(wd, "tile", wd.stage_manifest("tile"))],
                   fingerprint=outputs.output_fingerprint(params, files=[wd.features_index(spec.name)]))
    return EmbedResult(fdir, spec.name, weights.identity, spec.dim, cfg.views, device, precision,
                       len(todo), len(done), total, seconds, rate, steady, params,
                       took_over=len(stats["took_over"]))


UNITS_PER_SLOT = 2  # Dask: units per worker thread (balance), each a batch of slides


def _run_options(cfg: EmbedConfig) -> RunOptions:
    opts = RunOptions(shard=cfg.shard, dask=cfg.dask, merge=cfg.merge)
    opts.validate()
    if cfg.overwrite and cfg.shard:
        raise InputError("--overwrite with --shard would let each shard replace the others' work",
                         fix="run `brcatool embed --overwrite` once without --shard, then start the shards")
    return opts


def _dispatch(job: EmbedJob, todo: list[tuple[str, int]], opts: RunOptions,
              progress: bool) -> dict[str, Any]:
    """Run the units over ``todo`` on the chosen executor; totals of what they did."""
    stats: dict[str, Any] = {"patches": 0, "loop": 0.0, "first": (0, 0.0), "failed": {}, "fixes": [],
                             "took_over": [], "unit_seconds": 0.0}
    if not todo:
        return stats
    from brcatool.embed_unit import _progress

    t0 = time.perf_counter()
    with make_executor(opts) as ex:
        n_units = 1 if ex.name == "serial" else min(len(todo), ex.slots * UNITS_PER_SLOT)
        groups = [set(g) for g in balanced_shards(dict(todo), n_units)]
        units = [[seg for seg in todo if seg[0] in g] for g in groups if g]

        def failed(job_: tuple, exc: BaseException) -> dict[str, Any]:
            if isinstance(exc, BrcaError):  # its own fix (e.g. re-run tile) is kept whole
                where = f"{exc.path}: " if exc.path else ""
                stats["fixes"].append(exc.fix)
                return {"error": " ".join(f"{where}{exc.message}".split())[:300]}
            return {"error": " ".join(f"{type(exc).__name__}: {exc}".split())[:300]}

        with _progress(progress and ex.name != "serial") as bar:
            task = bar.add_task(f"{job.encoder} ({ex.name})", total=sum(n for _, n in todo))
            for (_, segs), res in ex.map(embed_unit, [(job, u) for u in units], failed):
                if "error" in res:
                    stats["failed"].update({s: res["error"] for s, _ in segs})
                    continue
                stats["patches"] += res["patches"]
                stats["unit_seconds"] += res["seconds"]
                stats["took_over"] += res["took_over"]
                if ex.name == "serial":
                    stats["loop"], stats["first"] = res["loop"], res["first"]
                elif not stats["first"][0] and res["patches"]:
                    stats["first"] = (res["patches"], time.perf_counter() - t0)
                bar.advance(task, sum(n for _, n in segs))
    if ex.name != "serial":
        stats["loop"] = time.perf_counter() - t0
    return stats


# --------------------------------------------------------------------------- for downstream stages
#: Parameters that make two feature stores interchangeable; train refuses to mix others.
IDENTITY_KEYS = ("encoder", "weights", "dim", "input_size", "normalisation", "stain_norm", "precision")


def feature_manifest(workdir: Path | Workdir, encoder: str) -> dict[str, Any]:
    """The finished embed manifest of ``encoder`` (``["params"]`` holds encoder, weights, dim, ...)."""
    wd = workdir if isinstance(workdir, Workdir) else Workdir(Path(workdir))
    path = wd.features_dir(encoder) / "manifest.json"
    if not path.is_file():
        have = ", ".join(wd.available_encoders()) or "none"
        raise ArtifactError(f"no features for encoder {encoder!r} (available: {have})", path=path,
                            fix=f"run `brcatool embed -w {wd.root} --encoder {encoder}` first")
    manifest = artifacts.read_json(path)
    if manifest.get("status") != "complete" or not wd.features_index(encoder).is_file():
        raise ArtifactError("embedding did not finish", path=path.parent,
                            fix=f"re-run `brcatool embed -w {wd.root} --encoder {encoder}` to resume")
    return manifest


def feature_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """The part of a feature manifest that must match for features to be mixed or compared."""
    params = manifest.get("params", manifest)
    return {k: params.get(k) for k in IDENTITY_KEYS}
