"""Benchmark `embed`: img/s of run_embed over a Zarr patch store vs the bare model, same run.

Per encoder and precision, ``--repeats`` interleaved rounds of three runs each:
- bare: the same model, batch size, precision and channels_last layout on an in-memory,
  already-normalised tensor on the device (what the network alone can do);
- embed: ``run_embed`` end to end (Zarr reads in worker processes, host->device copies, resize,
  normalisation, feature writes); its steady rate (after the first batch) is compared with bare;
- pipeline: ``run_embed`` with the network replaced by a null encoder of the same output size:
  the host-side pipeline's own ceiling, which must be well above the model's speed.
min / median / max over the rounds and the load average before and after are printed. With
``--reader-workers`` or ``--reader-only``, first the reader alone (the stage's DataLoader, no model)
at those worker counts (else the stage's), consumed as the stage consumes it (its shared buffers
held), against the same with the buffers dropped (each batch then mapped anew in this process),
in interleaved rounds after a warm-up round.

    python benchmarks/bench_embed.py --encoders resnet50 --patches 6000 --reader-only --reader-workers 1,2

    python benchmarks/bench_embed.py                                   # resnet50 + ViT-L (UNI), CPU
    python benchmarks/bench_embed.py --encoders resnet50 --patches 200 --precisions fp32
    python benchmarks/bench_embed.py --device cuda --patches 20000 --vit-patches 20000
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

# (benchmarks/ is on sys.path when run as a script)
from _common import Series, interleave, report_ratio, spread


def null_encoder(spec):
    """A network with ``spec``'s output size that does no work: (B, 3, H, W) -> (B, dim)."""
    from torch import nn

    class Null(nn.Module):
        def forward(self, x):
            return x[:, :1, 0, 0].expand(x.shape[0], spec.dim)  # a view: no copy of the batch

    return Null()


def bare_forward(spec, *, device: str, precision: str, batch: int, size: int, patches: int) -> float:
    """Images/s of the model alone over ``patches`` images (after one warm-up batch)."""
    import torch

    from brcatool.encoders import build_encoder, resolve_weights

    torch.backends.cudnn.benchmark = True  # as run_embed does
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
        outs = [model(x).float() for _ in range(n_batches)]  # queued back to back: no sync per batch
        torch.stack(outs).cpu()  # the stage also brings features back to the host (this waits)
    return n_batches * batch / (time.perf_counter() - t)


def reader_only(wd, *, batch: int, workers: int, hold: bool = True) -> float:
    """Images/s of the stage's DataLoader alone (Zarr reads in workers, pinned on CUDA), consumed
    as the stage does: the batches' reader buffers held (``hold``: ``patch_readers.holding``)
    and, on a CPU, each batch copied once into one reused buffer, the copy DataLoader's pin-memory
    thread makes on CUDA (the stage's first op, ``.float()``, reads every page the same way)."""
    import torch

    from brcatool.embed_unit import PREFETCH
    from brcatool.embedding import _segments
    from brcatool.patch_readers import PatchBatches, _worker_init, holding

    segments = _segments(wd).segments
    cuda = torch.cuda.is_available()
    loader = torch.utils.data.DataLoader(
        PatchBatches(wd.root, segments, batch, ring=PREFETCH + 2), batch_size=None,
        num_workers=workers, worker_init_fn=_worker_init if workers else None, pin_memory=cuda,
        prefetch_factor=PREFETCH if workers else None)
    sink = None
    it = iter(holding(loader) if hold else loader)
    first = n = len(next(it)["pixels"])  # excludes worker start-up
    t = time.perf_counter()
    for b in it:
        px = b["pixels"]
        if not cuda:
            sink = torch.empty_like(px) if sink is None or sink.shape[0] < len(px) else sink
            sink[:len(px)].copy_(px)
        n += len(px)
    return (n - first) / (time.perf_counter() - t) if n > first else float("nan")


def reader_rounds(wd, *, batch: int, workers: list[int], repeats: int) -> None:
    """The reader alone at each worker count, its buffers held (as the stage) and dropped, in
    interleaved rounds; prints min / median / max img/s and the held / dropped ratio."""
    for w in workers:
        label = f"{w} worker{'s' if w != 1 else ''}"
        rounds = interleave({f"held, {label}": lambda w=w: reader_only(wd, batch=batch, workers=w),
                             f"dropped, {label}": lambda w=w: reader_only(wd, batch=batch, workers=w,
                                                                           hold=False)},
                            repeats, verbose=False)
        held, dropped = rounds.values()
        print(f"reader alone (batch {batch}): {held.line('img/s', '8.0f')}")
        print(f"reader alone (batch {batch}): {dropped.line('img/s', '8.0f')}")
        report_ratio(f"reader alone, {label}: buffers held / dropped (img/s)", held, dropped,
                     target=None, at_most=False)


def _store(root: Path, patches: int, size: int, per_slide: int):
    from brcatool.artifacts import Workdir
    from brcatool.synth.patches import make_patch_workdir

    wd = Workdir(root)
    if not wd.patches_table.exists():
        t = time.perf_counter()
        full, rest = divmod(patches, per_slide)
        counts = [per_slide] * full + ([rest] if rest else [])
        make_patch_workdir(root, slides=len(counts), patches=counts, size=size, seed=0,
                           unique=min(patches, 256))
        print(f"store: {patches} patches of {size} px in {len(counts)} slides "
              f"({time.perf_counter() - t:.1f} s to write) at {root}")
    return wd


def bench_encoder(name: str, wd, *, device: str, precisions: list[str], repeats: int, batch_size: int | None,
                  num_workers: int | None, bare_patches: int) -> None:
    from brcatool.embedding import EmbedConfig, _segments, loader_defaults, run_embed
    from brcatool.encoders import get_encoder, register
    from brcatool.encoders.preprocess import plan_input

    spec = get_encoder(name)
    null = register(dataclasses.replace(spec, name=f"null-{spec.name}", family="custom",
                                        make=null_encoder, big=False))
    size = plan_input(spec, _segments(wd).patch_size, None).size
    batch, workers = loader_defaults(device, EmbedConfig(batch_size=batch_size, num_workers=num_workers),
                                     spec)
    print(f"\n{spec.name} ({spec.dim}-d, input {size} px), batch {batch}, {workers} reader workers, "
          f"{repeats} interleaved rounds; img/s as min / median / max")
    print(f"{'precision':>9} | {'bare':^30} | {'embed (steady)':^30} | {'ratio':>5} | "
          f"{'pipeline, null model':^30} | load avg")
    targets = []
    for precision in precisions:
        bare, emb, pipe = [], [], []
        load0 = os.getloadavg()[0]
        loads = []
        for _ in range(repeats):
            loads.append(os.getloadavg()[0])
            bare.append(bare_forward(spec, device=device, precision=precision, batch=batch, size=size,
                                     patches=bare_patches))
            for target, out in ((spec, emb), (null, pipe)):
                cfg = EmbedConfig(encoder=target.name, weights="random", device=device, precision=precision,
                                  batch_size=batch, num_workers=num_workers, overwrite=True)
                res = run_embed(wd, cfg, progress=False)  # steady: after the first batch
                out.append(res.steady_patches_per_s or res.patches_per_s)
        ratio = statistics.median(emb) / statistics.median(bare)
        cols = [spread(v, "8.1f") for v in (bare, emb)] + [f"{ratio:5.2f}", spread(pipe, "8.1f")]
        print(f"{precision:>9} | {' | '.join(cols)} | {load0:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)
        targets.append((precision, Series("embed", emb, loads), Series("bare", bare, loads)))
    for precision, emb_s, bare_s in targets:  # rates: embed / bare, at least the target
        report_ratio(f"embed / bare forward, {spec.name} {precision} on {device} (steady img/s)", emb_s,
                     bare_s, target=0.85 if device == "cuda" else 0.9, at_most=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoders", default="resnet50,uni",
                    help="comma-separated; uni is the ViT-L/16 row (random weights, timm)")
    ap.add_argument("--patches", type=int, default=1000, help="patches in the store (CNN rows)")
    ap.add_argument("--vit-patches", type=int, default=None,
                    help="patches for ViT rows (default: --patches on CUDA, 3 batches on CPU)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--per-slide", type=int, default=100)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--num-workers", type=int, default=None)
    ap.add_argument("--bare-fraction", type=float, default=0.25,
                    help="share of the store's patches run through the bare model per round")
    ap.add_argument("--workdir", type=Path, default=None, help="reuse/keep the stores under here")
    ap.add_argument("--reader-workers", default=None,
                    help="comma-separated worker counts: the reader alone at each, before the models")
    ap.add_argument("--reader-only", action="store_true",
                    help="only the reader-alone rounds (no model; the stage's worker count unless "
                         "--reader-workers): the host pipeline's data path")
    args = ap.parse_args()

    import torch

    from brcatool.devices import resolve_device
    from brcatool.embedding import EmbedConfig, loader_defaults
    from brcatool.encoders import get_encoder

    device = resolve_device(args.device)
    base = args.workdir or Path(tempfile.mkdtemp(prefix="bench-embed-"))
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU x{os.cpu_count()}"
    print(f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    for enc in args.encoders.split(","):
        spec = get_encoder(enc)
        batch, workers = loader_defaults(device, EmbedConfig(batch_size=args.batch_size,
                                                             num_workers=args.num_workers), spec)
        patches = args.patches if not spec.big else (
            args.vit_patches or (args.patches if device == "cuda" else 3 * batch))
        wd = _store(base / f"store-{patches}", patches, args.size, args.per_slide)
        if args.reader_workers or args.reader_only:
            counts = [int(w) for w in args.reader_workers.split(",")] if args.reader_workers else [workers]
            reader_rounds(wd, batch=batch, repeats=args.repeats, workers=counts)
        if args.reader_only:
            continue
        bench_encoder(enc, wd, device=device, precisions=args.precisions.split(","), repeats=args.repeats,
                      batch_size=args.batch_size, num_workers=args.num_workers,
                      bare_patches=max(batch, int(patches * args.bare_fraction)))


if __name__ == "__main__":
    main()
