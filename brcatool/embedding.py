"""The embed stage: patch store -> encoder features, one Zarr array per slide.

Encoders (registry, weights, stain/augment transforms) live in :mod:`brcatool.encoders`; this
module reads the patch store in batches, runs the encoder and writes features with a manifest
that records the weights' identity, so `train` can refuse to mix features. Augmented views are
computed here, once, so training never runs the encoder. ``run_embed`` is resumable per slide.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from brcatool import artifacts, stores
from brcatool.artifacts import Workdir
from brcatool.devices import resolve_device, resolve_precision
from brcatool.encoders.augment import JITTER, Macenko, augment, view_params
from brcatool.encoders.preprocess import Preprocess, plan_input
from brcatool.encoders.registry import get_encoder
from brcatool.encoders.runtime import cpu_estimate, default_batch, seconds_per_image
from brcatool.encoders.spec import EncoderSpec
from brcatool.encoders.weights import build_encoder, resolve_weights
from brcatool.errors import ArtifactError, InputError

if TYPE_CHECKING:
    import torch

# --------------------------------------------------------------------------- dataset
class PatchBatches:
    """Map-style dataset whose items are whole batches of consecutive patches (across slides).

    Reading contiguous slices of the sharded Zarr arrays is far cheaper than one read per
    patch; batches span slide ends so they stay full. Picklable for worker processes.
    """

    def __init__(self, root: Path, segments: list[tuple[str, int]], batch_size: int, *,
                 views: int = 1, seed: int = 0, stain: Macenko | None = None):
        self.root, self.segments, self.batch_size = Path(root), segments, batch_size
        self.views, self.seed, self.stain = views, seed, stain
        self.starts = np.cumsum([0] + [n for _, n in segments])
        self.total = int(self.starts[-1])
        self._arrays: dict[str, Any] = {}
        self._params: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return -(-self.total // self.batch_size)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}, "_params": {}}

    def _array(self, slide_id: str):
        if slide_id not in self._arrays:
            self._arrays[slide_id] = stores.read_patches(Workdir(self.root), slide_id)
        return self._arrays[slide_id]

    def _aug(self, slide_id: str, n: int) -> np.ndarray:
        if slide_id not in self._params:
            self._params = {slide_id: np.stack(
                [view_params(self.seed, slide_id, v, n) for v in range(1, self.views)])}
        return self._params[slide_id]

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, self.total)
        pix, aug = [], []
        s = int(np.searchsorted(self.starts, lo, side="right") - 1)
        while lo < hi:
            slide_id, n = self.segments[s]
            a, b = lo - self.starts[s], min(hi, self.starts[s + 1]) - self.starts[s]
            pix.append(np.asarray(self._array(slide_id)[a:b]))
            if self.views > 1:
                aug.append(self._aug(slide_id, n)[:, a:b])
            lo, s = self.starts[s] + b, s + 1
        arr = np.concatenate(pix)
        if self.stain is not None:
            arr = np.stack([self.stain(p) for p in arr])
        out = {"pixels": torch.from_numpy(arr)}
        out["aug"] = torch.from_numpy(np.concatenate(aug, axis=1)) if aug else torch.zeros(0)
        return out


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


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


@dataclass(frozen=True)
class _PatchIndex:
    segments: list[tuple[str, int]]  # (slide_id, n_patches) in table order
    patients: dict[str, str]  # slide -> patient
    patch_size: int
    reference: Callable[[], np.ndarray]  # reads the most-tissue patch (stain reference) on demand


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
    wd.require(wd.patches_zarr, made_by="tile")
    group = artifacts.open_group(wd.patches_zarr, schema="patch-store")
    counts = table.group_by("slide_id", maintain_order=True).len()
    patients = dict(zip(table["slide_id"], table["patient_id"], strict=True))
    segments, sizes = [], set()
    for slide_id, n in counts.iter_rows():
        try:
            arr = group[slide_id]
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
        return np.asarray(group[best["slide_id"]][best["patch_index"]])

    return _PatchIndex(segments, patients, sizes.pop()[0], reference)


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


class _SlideSink:
    """Collects batches (which may straddle slides); each full slide is checked and written in a
    background thread while the next batches compute (one write in flight: memory stays bounded).
    A context manager: leaving it waits for the last write and re-raises its error."""

    def __init__(self, wd: Workdir, encoder: str, segments: list[tuple[str, int]], views: int,
                 dim: int, attrs: dict[str, Any]):
        self.wd, self.encoder, self.attrs = wd, encoder, attrs
        self.todo = iter(segments)
        self.views, self.dim = views, dim
        self.slide, self.n, self.filled, self.buf = "", 0, 0, np.empty(0)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="embed-write")
        self.pending: Future | None = None

    def __enter__(self) -> _SlideSink:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        try:
            if self.pending is not None and exc_type is None:
                self.pending.result()
        finally:
            self.pool.shutdown(wait=True)

    def _write(self, slide: str, buf: np.ndarray) -> None:
        if not np.isfinite(buf).all():
            raise ArtifactError(f"non-finite features for slide {slide}",
                                path=self.wd.features_dir(self.encoder), fix="try --precision fp32")
        stores.write_features(self.wd, self.encoder, slide, buf, attrs=self.attrs)

    def add(self, feats: torch.Tensor, ready: Any = None) -> int:
        if ready is not None:
            ready.synchronize()
        out = feats.numpy()
        pos = 0
        while pos < out.shape[1]:
            if self.filled == self.n:
                self.slide, self.n = next(self.todo)
                self.filled, self.buf = 0, np.empty((self.views, self.n, self.dim), np.float16)
            take = min(self.n - self.filled, out.shape[1] - pos)
            self.buf[:, self.filled:self.filled + take] = out[:, pos:pos + take]
            self.filled, pos = self.filled + take, pos + take
            if self.filled == self.n:
                if self.pending is not None:
                    self.pending.result()  # the previous slide's write (and its error, if any)
                self.pending = self.pool.submit(self._write, self.slide, self.buf)
        return out.shape[1]


def _tile_params_hash(wd: Workdir) -> str | None:
    path = wd.stage_manifest("tile")
    return _params_hash(artifacts.read_json(path).get("params", {})) if path.is_file() else None


def _params_hash(params: dict[str, Any]) -> str:
    blob = json.dumps(artifacts.normalise(params), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed or 0:,.1f} patches/s")

    return Progress(TextColumn("embed {task.description}"), BarColumn(), MofNCompleteColumn(),
                    Rate(), TimeRemainingColumn(), console=Console(stderr=True),
                    disable=not enabled)


def run_embed(workdir: Path | Workdir, cfg: EmbedConfig, *, progress: bool = True) -> EmbedResult:
    """Embed every slide of the patch store with ``cfg.encoder``; resume slides already done."""
    import torch
    from rich.console import Console

    from brcatool.config import write_yaml

    t0 = time.perf_counter()
    wd = workdir if isinstance(workdir, Workdir) else Workdir(Path(workdir))
    if cfg.views < 1:
        raise InputError(f"--views must be >= 1, got {cfg.views}")
    if cfg.batch_size is not None and cfg.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.input_size is not None and cfg.input_size < 16:
        raise InputError(f"--input-size must be >= 16 px, got {cfg.input_size}")
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
    if cfg.overwrite and fdir.exists():
        shutil.rmtree(fdir)
    artifacts.check_params(manifest_path, params, overwrite=cfg.overwrite,
                           what=f"features of encoder {spec.name!r}")
    manifest = artifacts.Manifest("embed", params)
    manifest.add_input(wd.patches_table)
    manifest.write(manifest_path, status="running")
    if weights.source == "random":
        Console(stderr=True).print(
            f"[bold yellow]warning:[/] {spec.name} uses RANDOM weights (seed {cfg.seed}); features "
            "are only good for tests and demos. Use --weights imagenet, hf:ORG/NAME or PATH.")

    phash = _params_hash(params)
    existing = set(stores.feature_slides(wd, spec.name))
    group = artifacts.open_group(wd.features_zarr(spec.name), schema="feature-store") if existing else None
    done = {s for s, n in segments if s in existing
            and group[s].attrs.get("params_hash") == phash and group[s].shape == (cfg.views, n, spec.dim)}
    todo = [(s, n) for s, n in segments if s not in done]

    bs, workers = loader_defaults(device, cfg, spec)
    total = sum(n for _, n in todo)
    loop_start = first_at = time.perf_counter()
    first_n = 0
    if todo:
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
        model = build_encoder(spec, weights, seed=cfg.seed).to(device, memory_format=torch.channels_last)
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        if device == "cpu" and spec.big:  # a ViT-L/H/g on a CPU: say how long before starting
            cast = torch.autocast("cpu", dtype=amp) if amp is not None else None
            Console(stderr=True).print("[bold yellow]note:[/] " + cpu_estimate(
                spec, total, cfg.views, seconds_per_image(model, input_size, autocast=cast)))
        loop_start = time.perf_counter()
        data = PatchBatches(wd.root, todo, bs, views=cfg.views, seed=cfg.seed, stain=stain)
        loader = torch.utils.data.DataLoader(
            data, batch_size=None, shuffle=False, num_workers=workers, pin_memory=device == "cuda",
            worker_init_fn=_worker_init if workers else None, prefetch_factor=2 if workers else None)
        pre = Preprocess(spec, plan, device)
        prev = None
        with _SlideSink(wd, spec.name, todo, cfg.views, spec.dim, {"params_hash": phash}) as sink, \
                _progress(progress) as bar, torch.inference_mode(), \
                torch.autocast(device, dtype=amp or torch.float32, enabled=amp is not None):
            task = bar.add_task(f"{spec.name} ({device}, {precision})", total=total)
            for batch in loader:
                px = batch["pixels"].to(device, non_blocking=True)
                x = px.permute(0, 3, 1, 2).float().div_(255)  # NHWC memory = channels_last
                aug = batch["aug"]  # stays on the host: augment() reads it without a GPU sync
                b = x.shape[0]
                if device == "cuda" and b < bs:  # one input shape: no second cuDNN autotune
                    x = torch.cat([x, x.new_zeros((bs - b, *x.shape[1:]))]).contiguous(
                        memory_format=torch.channels_last)
                    if cfg.views > 1:  # identity augmentation for the padding
                        pad = aug.new_tensor([1, 1, 1, 0, 0]).expand(aug.shape[0], bs - b, 5)
                        aug = torch.cat([aug, pad], dim=1)
                feats = []
                for v in range(cfg.views):
                    xv = x if v == 0 else augment(x, aug[v - 1])
                    feats.append(model(pre(xv)).float())
                # copy back without waiting; the previous batch is stored while this one computes
                host = torch.stack(feats)[:, :b].to(torch.float16).to("cpu", non_blocking=True)
                done_evt = torch.cuda.Event() if device == "cuda" else None
                if done_evt is not None:
                    done_evt.record()
                if prev is not None:
                    bar.advance(task, sink.add(*prev))
                if not first_n:
                    first_n, first_at = host.shape[1], time.perf_counter()
                prev = (host, done_evt)
            if prev is not None:
                bar.advance(task, sink.add(*prev))
    loop_end = time.perf_counter()
    loop_seconds = loop_end - loop_start
    steady = (total - first_n) / (loop_end - first_at) if total > first_n and loop_end > first_at else 0.0

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
                            "seconds": round(seconds, 3), "patches_per_s": round(rate, 2),
                            "steady_patches_per_s": round(steady, 2)})
    return EmbedResult(fdir, spec.name, weights.identity, spec.dim, cfg.views, device, precision,
                       len(todo), len(done), total, seconds, rate, steady, params)


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
