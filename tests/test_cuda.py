"""The CUDA paths: embed on the GPU agrees with the CPU, and the whole pipeline runs on a GPU.

Skipped without a CUDA device (CI has none); run on a GPU machine with
``python -m pytest tests/test_cuda.py``. The CPU paths these compare with are tested everywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from brcatool import artifacts, stores  # noqa: E402
from brcatool.embedding import EmbedConfig, run_embed  # noqa: E402
from brcatool.synth.patches import make_patch_workdir  # noqa: E402

COUNTS = [7, 5, 9]  # batch 8: batches straddle slides and the last one is padded on the GPU


def _embed(root: Path, **kw) -> dict[str, np.ndarray]:
    wd = make_patch_workdir(root, slides=3, patches=COUNTS, size=64, seed=1)
    cfg = EmbedConfig(**{**dict(encoder="resnet18", weights="random", batch_size=8, num_workers=2,
                                views=2, precision="fp32"), **kw})
    res = run_embed(wd, cfg, progress=False)
    assert res.device == kw.get("device", "cpu") and res.patches == sum(COUNTS)
    return {s: stores.read_features(wd, "resnet18", s).astype(np.float32)
            for s in stores.feature_slides(wd, "resnet18")}


def test_embed_on_cuda_matches_cpu(tmp_path: Path):
    cpu = _embed(tmp_path / "cpu", device="cpu")
    gpu = _embed(tmp_path / "gpu", device="cuda")
    bf16 = _embed(tmp_path / "bf16", device="cuda", precision="bf16")
    assert sorted(cpu) == sorted(gpu) == sorted(bf16) and len(cpu) == 3
    for s in cpu:
        a, b, c = cpu[s], gpu[s], bf16[s]
        assert a.shape == b.shape == c.shape and a.shape[0] == 2 and a.shape[2] == 512
        scale = np.abs(a).max()
        # fp32 on the GPU (cuDNN may use TF32) vs the CPU, both stored as float16
        assert np.abs(a - b).max() <= 2e-2 * scale, s
        # bf16 autocast: same features to bf16's precision, patch by patch (both views)
        for v in range(2):
            for i in range(a.shape[1]):
                r = np.corrcoef(a[v, i], c[v, i])[0, 1]
                assert r > 0.99, (s, v, i, r)


@pytest.mark.parametrize("bag_size", [0, 4])
def test_train_and_evaluate_on_cuda(tmp_path: Path, bag_size: int):
    """Every registered fusion trains on the GPU (padded and ragged bags), learns the planted
    signal, records CUDA in its manifest; evaluate predicts and explains on the GPU."""
    from brcatool.evaluation import EvaluateConfig, run_evaluate
    from brcatool.models import FUSIONS
    from brcatool.synth import make_prepared_workdir
    from brcatool.training import TrainConfig, run_train

    wd = make_prepared_workdir(tmp_path / "w", patients=80, patches=6, dim=16, genes=24, gene_signal=1.5,
                               image_signal=1.5, ragged=True, seed=1).workdir
    fast = dict(folds=3, epochs=25, lr=3e-3, hidden=16, heads=2, gene_tokens=2, batch_size=16, patience=6)
    names = list(FUSIONS.names())
    assert names
    for fusion in names:
        res = run_train(wd, TrainConfig(fusion=fusion, name=fusion, device="cuda", bag_size=bag_size, **fast),
                        progress=False)
        man = artifacts.read_json(res.run_dir / "manifest.json")
        assert man["device"].startswith("cuda"), (fusion, man["device"])
        assert res.metrics["roc_auc"] > 0.85, (fusion, res.metrics["roc_auc"])
    for fusion in names:  # attention models export attention, the others occlusion
        ev = run_evaluate(wd, EvaluateConfig(run=fusion, bootstrap=20, top_k=0, plots=False, device="cuda"),
                          progress=False)
        assert ev.n_patients == 80 and ev.pooled["roc_auc"] > 0.85, (fusion, ev.pooled)
        if FUSIONS.get(fusion).uses_image:
            assert any(ev.out_dir.rglob("*attention*.parquet")), f"{fusion}: no patch weights exported"


def test_pinned_batches_keep_their_reader_buffers(tmp_path: Path):
    """With DataLoader's pin-memory thread (the stage's CUDA path), each batch arrives pinned and
    intact while ``holding`` keeps the worker's shared buffer (not a pinned copy) under "keep",
    also once the workers reuse their ring buffers."""
    from brcatool.embed_unit import PREFETCH
    from brcatool.patch_readers import Mapped, PatchBatches, _worker_init, holding

    wd = make_patch_workdir(tmp_path / "wd", slides=2, patches=[60, 44], size=32, seed=2)
    slides = list(stores.patch_slides(wd))
    every = np.concatenate([np.asarray(stores.read_patches(wd, s)[:]) for s in slides])
    segments = [(s, stores.read_patches(wd, s).shape[0]) for s in slides]
    data = PatchBatches(wd.root, segments, 4, ring=PREFETCH + 2)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2, pin_memory=True,
                                         worker_init_fn=_worker_init, prefetch_factor=PREFETCH)
    n = 0
    for i, b in enumerate(holding(loader)):
        assert b["pixels"].is_pinned() and isinstance(b["keep"], Mapped)
        assert b["keep"].tensor.data_ptr() != b["pixels"].data_ptr()
        assert np.array_equal(b["pixels"].numpy(), every[4 * i:4 * i + 4]), i
        n += len(b["pixels"])
    assert n == len(every) and len(data) > 2 * 2 * (PREFETCH + 2)
