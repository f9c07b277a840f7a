"""The embed unit: a batch of slides -> features; the same function in-process, in a shard or a Dask task.

``embed_unit`` takes the per-slide locks of its slides (``brcatool.locks``; a slide another process
holds is left to it), skips slides already embedded with these parameters (a feature array's
``params_hash`` attribute is the per-slide record), feeds the rest through one DataLoader and writes
each slide's features atomically as soon as its last batch is done. The encoder is built once per
process (``_model``), so a Dask worker running many units loads its weights once.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from brcatool import locks, stores
from brcatool.artifacts import Workdir
from brcatool.encoders.augment import Macenko, augment
from brcatool.names import file_name
from brcatool.patch_readers import PatchBatches, SlideBatches, SlideSource, _worker_init, holding

if TYPE_CHECKING:
    import torch

LOCKS = ".locks"  # per-slide lock files, inside features/<encoder>/
PREFETCH = 2  # batches in flight per reader process (their ring of shared buffers holds 2 more)


@dataclass
class EmbedJob:
    """What every unit of one embed run shares, resolved once by ``run_embed`` (picklable)."""

    wd: Workdir  # with its redirects (an --overwrite builds beside the old features)
    encoder: str
    weights: Any  # encoders.weights.Weights
    plan: Any  # encoders.preprocess input plan
    seed: int
    device: str
    precision: str
    batch_size: int
    num_workers: int
    views: int
    stain: Macenko | None
    phash: str
    sources: dict[str, SlideSource] | None = None  # tile --no-pixels: read from the slides
    target_mpp: float | None = None
    progress: bool = False  # a live per-batch bar (in-process runs)
    writer_process: bool | None = None  # write features from a child process (None: on CUDA)


def finished(wd: Workdir, encoder: str, phash: str, segments: list[tuple[str, int]], views: int,
             dim: int) -> set[str]:
    """Slides whose features exist with this shape and were made with these parameters."""
    existing = set(stores.feature_slides(wd, encoder))
    if not existing:
        return set()
    group = stores.feature_group(wd, encoder)
    out = set()
    for s, n in segments:
        if s in existing:
            arr = stores.member(group, s)
            if arr.attrs.get("params_hash") == phash and arr.shape == (views, n, dim):
                out.add(s)
    return out


_MODELS: dict[tuple, Any] = {}  # this process's encoder (a Dask worker builds it once)


def _model(job: EmbedJob, spec: Any) -> Any:
    import torch

    from brcatool.encoders.weights import build_encoder

    key = (job.encoder, job.weights.identity, job.seed, job.device)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = build_encoder(spec, job.weights, seed=job.seed).to(
            job.device, memory_format=torch.channels_last)
    return _MODELS[key]


def embed_unit(job: EmbedJob, segments: list[tuple[str, int]]) -> dict[str, Any]:
    """Embed the unit's slides that are neither done nor held by another process.

    Returns ``{"embedded", "skipped", "busy", "took_over", "patches", "seconds", "loop", "first"}``
    (``first``: patches of the first batch and when it arrived, for the steady-state rate).
    """
    from brcatool.encoders.registry import get_encoder

    t0 = time.perf_counter()
    wd = job.wd
    spec = get_encoder(job.encoder)
    lock_dir = wd.features_dir(spec.name) / LOCKS
    held, busy = [], []
    try:
        for sid, n in segments:
            lock = locks.acquire(lock_dir / f"{file_name(sid)}.lock")
            if lock is None:
                busy.append(sid)
            else:
                held.append((sid, n, lock))
        mine = [(sid, n) for sid, n, _ in held]
        done = finished(wd, spec.name, job.phash, mine, job.views, spec.dim)
        todo = [(sid, n) for sid, n in mine if sid not in done]
        out = {"embedded": [s for s, _ in todo], "skipped": sorted(done), "busy": busy,
               "took_over": [f"{sid}: {lk.took_over.describe()}" for sid, _, lk in held if lk.took_over],
               "patches": sum(n for _, n in todo), "loop": 0.0, "first": (0, 0.0)}
        if todo:
            out.update(_encode(job, spec, wd, todo))
        out["seconds"] = time.perf_counter() - t0
        return out
    finally:
        for _, _, lock in held:
            lock.release()


def _encode(job: EmbedJob, spec: Any, wd: Workdir, todo: list[tuple[str, int]]) -> dict[str, Any]:
    """The encoder over ``todo``'s patches (batches may straddle slides); each slide written when full."""
    import torch
    from rich.console import Console

    from brcatool.encoders.preprocess import Preprocess
    from brcatool.encoders.runtime import cpu_estimate, seconds_per_image

    device, precision, bs, workers = job.device, job.precision, job.batch_size, job.num_workers
    total = sum(n for _, n in todo)
    torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
    model = _model(job, spec)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if job.progress and device == "cpu" and spec.big:  # a ViT-L/H/g on a CPU: say how long first
        cast = torch.autocast("cpu", dtype=amp) if amp is not None else None
        Console(stderr=True).print("[bold yellow]note:[/] " + cpu_estimate(
            spec, total, job.views, seconds_per_image(model, job.plan.size, autocast=cast)))
    loop_start = first_at = time.perf_counter()
    first_n = 0
    kw = {"views": job.views, "seed": job.seed, "stain": job.stain, "ring": PREFETCH + 2}
    data = (PatchBatches(wd.root, todo, bs, **kw) if job.sources is None else
            SlideBatches(wd.root, todo, bs, sources=job.sources, target_mpp=job.target_mpp, **kw))
    loader = torch.utils.data.DataLoader(
        data, batch_size=None, shuffle=False, num_workers=workers, pin_memory=device == "cuda",
        worker_init_fn=_worker_init if workers else None, prefetch_factor=PREFETCH if workers else None)
    pre = Preprocess(spec, job.plan, device)
    upload = _Upload(device)
    prev = None
    writer_process = job.writer_process if job.writer_process is not None else (
        device == "cuda" and not multiprocessing.current_process().daemon)  # (daemons have no children)
    with _SlideSink(wd, spec.name, todo, job.views, spec.dim, {"params_hash": job.phash},
                    process=writer_process) as sink, \
            _progress(job.progress) as bar, torch.inference_mode(), \
            torch.autocast(device, dtype=amp or torch.float32, enabled=amp is not None):
        task = bar.add_task(f"{spec.name} ({device}, {precision})", total=total)
        for batch in holding(loader):  # (the reader processes' buffers stay mapped here)
            px = upload(batch["pixels"])
            x = px.permute(0, 3, 1, 2).float().div_(255)  # NHWC memory = channels_last
            aug = batch["aug"]  # stays on the host: augment() reads it without a GPU sync
            b = x.shape[0]
            if device == "cuda" and b < bs:  # one input shape: no second cuDNN autotune
                x = torch.cat([x, x.new_zeros((bs - b, *x.shape[1:]))]).contiguous(
                    memory_format=torch.channels_last)
                if job.views > 1:  # identity augmentation for the padding
                    pad = aug.new_tensor([1, 1, 1, 0, 0]).expand(aug.shape[0], bs - b, 5)
                    aug = torch.cat([aug, pad], dim=1)
            feats = []
            for v in range(job.views):
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
    return {"loop": time.perf_counter() - loop_start, "first": (first_n, first_at - loop_start)}


class _Upload:
    """Host -> device copies of uint8 batches. On CUDA they run on a side stream, so batch i+1
    crosses PCIe while the model computes batch i (on one stream the copy, 50 MB for 256 patches
    of 256 px, would sit between the two forwards)."""

    def __init__(self, device: str) -> None:
        import torch

        self.device = device
        self.stream = torch.cuda.Stream() if device == "cuda" else None

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        import torch

        if self.stream is None:
            return pixels.to(self.device, non_blocking=True)
        with torch.cuda.stream(self.stream):
            px = pixels.to(self.device, non_blocking=True)
        compute = torch.cuda.current_stream()
        compute.wait_stream(self.stream)  # the model waits for its copy, the host does not
        px.record_stream(compute)  # the allocator may not reuse px until compute is done with it
        return px


_WRITER: list[ProcessPoolExecutor] = []  # this process's feature-writer process, made once
_WRITER_LOCK = threading.Lock()


def _writer_process() -> ProcessPoolExecutor:
    """The child process that writes features (spawned once and warmed up: it has imported
    zarr before the first slide is done; a broken one is replaced)."""
    with _WRITER_LOCK:
        if not _WRITER or getattr(_WRITER[0], "_broken", False):
            for old in _WRITER:
                old.shutdown(wait=False, cancel_futures=True)
            _WRITER[:] = [ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                              initializer=_writer_init, initargs=(os.getpid(),))]
            _WRITER[0].submit(stores.warm_up)
        return _WRITER[0]


def _writer_init(parent: int) -> None:
    """In the writer process: Ctrl-C is the parent's to handle (no second traceback from here), and
    the process ends when its parent is gone, however it died (kill -9, the OOM killer)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


class _SlideSink:
    """Collects batches (which may straddle slides); each full slide is checked and written in the
    background while the next batches compute (one write in flight: memory stays bounded).
    A context manager: leaving it waits for the last write and re-raises its error.

    ``process=True`` writes in a child process instead of a thread: a Zarr write is ~3-5 ms of
    Python per slide, which on a GPU that embeds a 100-patch slide every ~9 ms (ResNet-50, bf16,
    H200) competes with the loop for the GIL. The child is spawned once per process and kept
    (``_writer_process``), so only a process's first run pays its start; it is for CUDA.
    """

    def __init__(self, wd: Workdir, encoder: str, segments: list[tuple[str, int]], views: int,
                 dim: int, attrs: dict[str, Any], *, process: bool = False):
        self.wd, self.encoder, self.attrs = wd, encoder, attrs
        self.todo = iter(segments)
        self.views, self.dim = views, dim
        self.slide, self.n, self.filled, self.buf = "", 0, 0, np.empty(0)
        self.process = process
        self.pool: Executor = _writer_process() if process else ThreadPoolExecutor(
            1, thread_name_prefix="embed-write")
        self.pending: Future | None = None

    def __enter__(self) -> _SlideSink:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        try:
            if self.pending is not None and exc_type is None:
                self.pending.result()
        finally:
            if not self.process:  # (the writer process stays for this process's next run)
                self.pool.shutdown(wait=True, cancel_futures=True)
            elif self.pending is not None and not self.pending.done():
                wait([self.pending])  # a failed run leaves no write behind it

    def _write(self, slide: str, buf: np.ndarray) -> Future:
        return self.pool.submit(stores.write_slide_features, self.wd, self.encoder, slide, buf, self.attrs)

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
                self.pending = self._write(self.slide, self.buf)
        return out.shape[1]


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
