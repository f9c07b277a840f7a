"""embed's batch datasets: the right pixels in every batch, also when worker buffers are reused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from brcatool import stores
from brcatool.embed_unit import PREFETCH
from brcatool.patch_readers import PatchBatches, _worker_init
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
