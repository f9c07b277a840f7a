"""Benchmark `embed`: patches/s of run_embed over a Zarr patch store vs a bare forward pass.

The limit is the same model, batch size, precision and channels_last layout on an in-memory,
already-normalised tensor on the device: what the CNN alone can do. The ratio says how much the
stage (Zarr reads in worker processes, host->device copies, normalisation, feature writes) costs.

    python benchmarks/bench_embed.py                          # 1,000 patches of 256 px, CPU
    python benchmarks/bench_embed.py --patches 200 --precisions fp32
    python benchmarks/bench_embed.py --device cuda --patches 20000 --batch-size 256
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def bare_forward(encoder: str, *, device: str, precision: str, batch: int, size: int,
                 patches: int) -> float:
    """Images/s of the model alone over ``patches`` images (after one warm-up batch)."""
    import torch

    from brcatool.encoders import build_encoder, get_encoder, resolve_weights

    torch.backends.cudnn.benchmark = True  # as run_embed does
    spec = get_encoder(encoder)
    model = build_encoder(spec, resolve_weights(spec, "random", seed=0)).to(
        device, memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    n_batches = max(2, -(-patches // batch))
    with torch.inference_mode(), torch.autocast(device, dtype=amp or torch.float32,
                                                enabled=amp is not None):
        model(x).float().cpu()
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n_batches):
            model(x).float().cpu()  # the stage also brings features back to the host
        if device == "cuda":
            torch.cuda.synchronize()
    return n_batches * batch / (time.perf_counter() - t)


def reader_only(wd, *, batch: int, workers: int) -> float:
    """Images/s of the stage's DataLoader alone (Zarr reads in workers, pinned on CUDA)."""
    import torch

    from brcatool.embedding import PatchBatches, _segments, _worker_init

    segments = _segments(wd).segments
    loader = torch.utils.data.DataLoader(
        PatchBatches(wd.root, segments, batch), batch_size=None, num_workers=workers,
        worker_init_fn=_worker_init if workers else None, pin_memory=torch.cuda.is_available())
    it = iter(loader)
    n = len(next(it)["pixels"])  # excludes worker start-up
    t = time.perf_counter()
    for b in it:
        n += len(b["pixels"])
    return (n - batch) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--per-slide", type=int, default=100)
    ap.add_argument("--encoder", default="resnet50")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--num-workers", type=int, default=None)
    ap.add_argument("--bare-fraction", type=float, default=0.25,
                    help="share of --patches run through the bare model, before and after the stage")
    ap.add_argument("--workdir", type=Path, default=None, help="reuse/keep the store here")
    args = ap.parse_args()

    import torch

    from brcatool.artifacts import Workdir
    from brcatool.devices import resolve_device
    from brcatool.embedding import EmbedConfig, loader_defaults, run_embed
    from brcatool.synth.patches import make_patch_workdir

    device = resolve_device(args.device)
    batch, workers = loader_defaults(
        device, EmbedConfig(batch_size=args.batch_size, num_workers=args.num_workers))
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-embed-"))
    wd = Workdir(root)
    if not wd.patches_table.exists():
        t = time.perf_counter()
        full, rest = divmod(args.patches, args.per_slide)
        counts = [args.per_slide] * full + ([rest] if rest else [])
        make_patch_workdir(root, slides=len(counts), patches=counts, size=args.size, seed=0,
                           unique=min(args.patches, 256))
        print(f"store: {args.patches} patches of {args.size} px in {len(counts)} slides "
              f"({time.perf_counter() - t:.1f} s to write) at {root}")
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU x{os.cpu_count()}"
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"encoder {args.encoder}, batch {batch}")
    print(f"reader alone ({workers} workers): {reader_only(wd, batch=batch, workers=workers):.1f} img/s")
    n_bare = max(batch, int(args.patches * args.bare_fraction))
    print(f"{'precision':>9} | {'bare img/s':>10} | {'embed img/s':>11} | {'ratio':>5} | "
          f"{'steady img/s':>12} | {'ratio':>5} | {'end-to-end s':>12}")
    for precision in args.precisions.split(","):
        kw = dict(device=device, precision=precision, batch=batch, size=args.size, patches=n_bare)
        before = bare_forward(args.encoder, **kw)
        cfg = EmbedConfig(encoder=args.encoder, weights="random", device=device, precision=precision,
                          batch_size=batch, num_workers=args.num_workers, overwrite=True)
        res = run_embed(wd, cfg, progress=False)
        after = bare_forward(args.encoder, **kw)
        bare = (before + after) / 2
        print(f"{precision:>9} | {bare:>10.1f} | {res.patches_per_s:>11.1f} | "
              f"{res.patches_per_s / bare:>5.2f} | {res.steady_patches_per_s:>12.1f} | "
              f"{res.steady_patches_per_s / bare:>5.2f} | {res.seconds:>12.1f}   "
              f"(bare before/after {before:.1f}/{after:.1f})", flush=True)


if __name__ == "__main__":
    main()
