"""embed's batch datasets: the right pixels in every batch, also when worker buffers are reused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from brcatool import stores
from brcatool.embed_unit import PREFETCH
from brcatool.patch_readers import Mapped, PatchBatches, _worker_init, holding
from brcatool.synth.patches import make_patch_workdir

COUNTS = [7, 5, 9, 11]


@pytest.fixture(scope="module")
def wd(tmp_path_factory: pytest.TempPathFactory):
    return make_patch_workdir(tmp_path_factory.mktemp("readers") / "wd", slides=4, patches=COUNTS, size=16,
                              seed=3)


def _expected(wd) -> tuple[list[str], np.ndarray]:
    slides = list(stores.patch_slides(wd))
    return slides, np.concatenate([np.asarray(stores.read_patches(wd, s)[:]) for s in slides])


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_batches_hold_the_right_patches_while_buffers_are_reused(wd, workers: int) -> None:
    """Batches of 3 straddle slides; each worker serves ~6 batches from a ring of PREFETCH + 2
    buffers. A batch must still be intact one loop step later (the stage copies it by then)."""
    slides, every = _expected(wd)
    segments = list(zip(slides, [stores.read_patches(wd, s).shape[0] for s in slides], strict=True))
    data = PatchBatches(wd.root, segments, 3, ring=PREFETCH + 2)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers,
                                         worker_init_fn=_worker_init if workers else None,
                                         prefetch_factor=PREFETCH if workers else None)
    prev, seen = None, 0
    for i, batch in enumerate(loader):
        px = batch["pixels"].numpy()
        assert np.array_equal(px, every[3 * i:3 * i + 3]), i
        if prev is not None:  # held one more step, as the stage's loop does
            assert np.array_equal(prev[1], every[3 * prev[0]:3 * prev[0] + 3]), prev[0]
        prev, seen = (i, px), seen + len(px)
    assert seen == sum(COUNTS) and len(data) > 2 * (PREFETCH + 2)


def test_in_process_batches_are_independent_tensors(wd) -> None:
    slides, every = _expected(wd)
    segments = list(zip(slides, [stores.read_patches(wd, s).shape[0] for s in slides], strict=True))
    data = PatchBatches(wd.root, segments, 4)
    kept = [data[i]["pixels"] for i in range(len(data))]  # no worker: no ring, nothing reused
    assert np.array_equal(torch.cat(kept).numpy(), every)
    assert data.read(slides[1], 2, 4).shape == (2, 16, 16, 3)


def test_a_store_zarr_writes_otherwise_is_read_through_zarr(tmp_path: Path, wd) -> None:
    """An array without the store's shard layout (e.g. rewritten by another tool) still reads."""
    import shutil

    import zarr

    copy = tmp_path / "copy"
    shutil.copytree(wd.root, copy)
    from brcatool.artifacts import Workdir

    other = Workdir(copy)
    sid = stores.patch_slides(other)[0]
    pixels = np.asarray(stores.read_patches(other, sid)[:])
    shutil.rmtree(other.patches_zarr / sid)
    arr = zarr.create_array(store=str(other.patches_zarr / sid), shape=pixels.shape, dtype=np.uint8,
                            chunks=(2, 16, 16, 3), zarr_format=3, attributes={stores.ID_ATTR: sid})
    arr[:] = pixels
    reader = stores.PatchReader(other, sid)
    assert reader.fast is None
    out = np.empty((3, 16, 16, 3), np.uint8)
    reader.read_into(1, 4, out)
    assert np.array_equal(out, pixels[1:4])


def test_held_reader_buffers_are_mapped_once_in_this_process(tmp_path: Path) -> None:
    """``holding`` keeps the workers' shared buffers mapped here: after the first turn of the ring a
    batch arrives in memory this process has already touched (no page faults reading it); batches
    whose buffers were dropped are mapped anew and fault on first read."""
    import resource

    wd = make_patch_workdir(tmp_path / "wd", slides=2, patches=[400, 384], size=64, seed=5, unique=8)
    slides, every = _expected(wd)
    segments = list(zip(slides, [stores.read_patches(wd, s).shape[0] for s in slides], strict=True))
    batch = 32  # 393 KB: 96 pages per batch

    def faults_per_batch(hold: bool) -> float:
        data = PatchBatches(wd.root, segments, batch, ring=PREFETCH + 2)
        loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=1,
                                             worker_init_fn=_worker_init, prefetch_factor=PREFETCH)
        counts = []
        for i, b in enumerate(holding(loader) if hold else loader):
            px = b["pixels"].numpy()
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            total = int(px.sum(dtype=np.int64))  # reads every page of the batch, allocates nothing big
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            assert total == int(every[i * batch:(i + 1) * batch].sum(dtype=np.int64)), i
            assert isinstance(b["keep"], Mapped) and b["keep"].tensor.data_ptr() == b["pixels"].data_ptr()
        return float(np.median(counts[2 * (PREFETCH + 2):]))  # after the ring's first two turns

    held, dropped = faults_per_batch(True), faults_per_batch(False)
    assert held < 1 < dropped, (held, dropped)


def test_the_kept_buffer_passes_dataloader_pinning_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA, DataLoader's pin-memory thread copies each batch's tensors into pinned memory; the
    ``Mapped`` holder must come through as it is (still the worker's buffer, not a pinned copy)."""
    from torch.utils.data._utils.pin_memory import pin_memory

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: self.clone())  # (no GPU here)
    shared = torch.arange(12, dtype=torch.uint8)
    batch = {"pixels": shared, "aug": torch.zeros(0), "keep": Mapped(shared)}
    pinned = pin_memory(batch)
    assert pinned["keep"] is batch["keep"] and pinned["keep"].tensor is shared
    assert pinned["pixels"] is not shared and torch.equal(pinned["pixels"], shared)
