"""`brcatool embed`: patch store -> features/<encoder>/ (parse, call run_embed, report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brcatool.cli.common import (
    ConfigOpt,
    DaskOpt,
    MergeOpt,
    OverwriteOpt,
    QuietOpt,
    SeedOpt,
    ShardOpt,
    WorkdirOpt,
    console,
    default_workdir,
    report_errors,
)


@report_errors
def embed(
    workdir: WorkdirOpt = default_workdir(),
    encoder: Annotated[str, typer.Option(
        "--encoder", "-e",
        help="Encoder: resnet50 (2048-d), resnet50-trunc (layer3, 1024-d), resnet18, resnet34, "
        "efficientnet_b0, mobilenet_v3_large, another torchvision classifier (densenet121, "
        "convnext_tiny, vit_b_16, ...); pathology foundation models uni (1024-d), uni2-h (1536-d), "
        "virchow2 (2560-d), h-optimus-0 (1536-d), prov-gigapath (1536-d); or timm:<model-name>."
    )] = "resnet50",
    weights: Annotated[str, typer.Option(
        "--weights",
        help="imagenet (torchvision weights, from the TORCH_HOME cache), hf:ORG/NAME or "
        "hf:ORG/NAME/FILE (Hugging Face cache, HF_HOME; downloads unless HF_HUB_OFFLINE=1; gated "
        "models need HF_TOKEN), PATH "
        "(.bin/.pth/.safetensors state_dict) or random (seeded; tests and offline demos only)."
    )] = "imagenet",
    input_size: Annotated[int | None, typer.Option(
        "--input-size", help="Resize patches to this many px (default: the patch size, no resize).")] = None,
    stain_norm: Annotated[str, typer.Option(
        "--stain-norm", help="none or macenko.")] = "none",
    stain_ref: Annotated[Path | None, typer.Option(
        "--stain-ref", dir_okay=False,
        help="Reference image for Macenko (default: the most tissue-rich patch).")] = None,
    views: Annotated[int, typer.Option(
        "--views", min=1, help="Feature views per patch: view 0 clean, the others colour-jittered "
        "and rotated/flipped (seeded), for training-time augmentation.")] = 1,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    precision: Annotated[str, typer.Option(
        "--precision", help="auto (bf16 where the CPU/GPU has it natively, else fp32), fp32, bf16, "
        "fp16.")] = "auto",
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, help="Patches per forward pass (default 256 on CUDA, 32 on CPU; "
        "less for ViT-L/H/g foundation models).")] = None,
    num_workers: Annotated[int | None, typer.Option(
        "--num-workers", min=0,
        help="DataLoader reader processes (default: min(8, CPUs) on CUDA, 1 on CPU).")] = None,
    config: ConfigOpt = None,
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
    shard: ShardOpt = None,
    dask: DaskOpt = None,
    merge: MergeOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Encode every patch with an encoder into features/<encoder>/features.zarr (resumable per slide)."""
    from rich.table import Table

    from brcatool.embedding import EmbedConfig, run_embed

    cfg = EmbedConfig(encoder=encoder, weights=weights, input_size=input_size, stain_norm=stain_norm,
                      stain_ref=stain_ref, views=views, seed=seed, device=device, precision=precision,
                      batch_size=batch_size, num_workers=num_workers, shard=shard, dask=dask,
                      merge=merge, overwrite=overwrite)
    res = run_embed(workdir, cfg, progress=not quiet)
    if quiet:
        return
    if res.took_over:
        console.print(f"took over {res.took_over} stale slide lock(s) of processes that had died")
    if res.pending:
        console.print(f"embed: this run's slides are done; {res.pending} slide(s) are left to other "
                      "shards/processes (the last to finish writes the index, or run with --merge)")
        return
    table = Table(title=f"embed: {res.features_dir}", show_header=False)
    for key, value in [
        ("encoder", f"{res.encoder} ({res.dim}-d, input {res.params['input_size']} px)"),
        ("weights", res.weights),
        ("views", str(res.views)),
        ("device / precision", f"{res.device} / {res.precision}"),
        ("slides embedded / skipped", f"{res.slides_embedded} / {res.slides_skipped}"),
        ("patches embedded", f"{res.patches:,}"),
        ("speed", f"{res.patches_per_s:,.1f} patches/s"),
        ("seconds", f"{res.seconds:.1f}"),
    ]:
        table.add_row(key, value)
    console.print(table)
