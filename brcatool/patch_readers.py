"""Where embed's pixels come from: the patch store, or the slides themselves (``tile --no-pixels``).

Both are map-style datasets whose items are whole batches of consecutive patches (across slides),
for a DataLoader with ``batch_size=None``. ``SlideBatches`` reads the coordinates of
``patches.parquet`` with openslide inside the DataLoader workers, with tile's own read plan
(``slides.plan_read`` + ``slides.read_patch``), so both routes give the same pixels.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from brcatool import slides, stores
from brcatool.artifacts import Workdir
from brcatool.encoders.augment import Macenko, view_params
from brcatool.errors import ArtifactError

if TYPE_CHECKING:
    import torch


class PatchBatches:
    """Map-style dataset whose items are whole batches of consecutive patches (across slides).

    Reading contiguous slices of the sharded Zarr arrays is far cheaper than one read per
    patch; batches span slide ends so they stay full. Picklable for worker processes.

    In a DataLoader worker each batch is decoded straight into one of ``ring`` shared-memory
    buffers that the worker reuses in turn, so handing a batch to the main process copies
    nothing and touches no fresh pages (a new shared buffer per batch cost a worker as much as
    the decoding). This is safe with torch's DataLoader as embed uses it (in order, no persistent
    workers): batch ``s`` always comes from worker ``s % W``, and the loader sends that worker its
    next task, batch ``s + P * W`` (P = ``prefetch_factor``), only when it hands batch ``s`` to the
    loop. That task reuses the buffer of the worker's batch ``ring`` turns earlier, batch
    ``s + (P - ring) * W``; with ``ring = P + 2`` that is batch ``s - 2W``, which the loop received
    two of that worker's turns ago and the stage has long copied (into pinned memory on CUDA,
    before the loop even sees it; with ``.float()`` on a CPU). tests/test_patch_readers.py holds
    each batch one step longer than the stage does and fails with a ring of P or less.

    Each batch also carries its buffer under ``"keep"`` (a ``Mapped``, or None in-process), for
    the consuming loop to hold while the worker may send that buffer again (``holding``: the last
    2 x ring x W of them). torch's receiving side finds a storage it still holds by its
    shared-memory file and reuses that mapping; one it dropped is mapped anew, 50 MB per batch of
    256 patches of 256 px, and the first read of it page-faults through every page (DataLoader's
    pin-memory thread copying it on CUDA, ``.float()`` on a CPU). Held, the reader alone is a
    little faster on 2 cores (`benchmarks/bench_embed.py --reader-only`; the README's benchmark
    table). ring x W held batches would do (the pin-memory thread reads ahead of the loop, never
    past that); ``holding`` keeps twice that as a margin: the same buffers, no more memory.
    """

    def __init__(self, root: Path, segments: list[tuple[str, int]], batch_size: int, *,
                 views: int = 1, seed: int = 0, stain: Macenko | None = None, ring: int = 4):
        self.root, self.segments, self.batch_size = Path(root), segments, batch_size
        self.views, self.seed, self.stain, self.ring = views, seed, stain, ring
        self.starts = np.cumsum([0] + [n for _, n in segments])
        self.total = int(self.starts[-1])
        self._readers: dict[str, Any] = {}
        self._params: dict[str, np.ndarray] = {}
        self._buffers: list[Any] = []
        self._served = 0

    def __len__(self) -> int:
        return -(-self.total // self.batch_size)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_readers": {}, "_params": {}, "_buffers": [], "_served": 0}

    def _reader(self, slide_id: str) -> stores.PatchReader:
        if slide_id not in self._readers:
            self._readers[slide_id] = stores.PatchReader(Workdir(self.root), slide_id)
        return self._readers[slide_id]

    def patch_shape(self, slide_id: str) -> tuple[int, ...]:
        """(s, s, 3) of the slide's patches."""
        return tuple(self._reader(slide_id).shape[1:])

    def read_into(self, slide_id: str, a: int, b: int, out: np.ndarray) -> None:
        """Patches ``a:b`` of the slide into ``out`` (uint8 (b - a, s, s, 3), C-contiguous)."""
        self._reader(slide_id).read_into(a, b, out)

    def read(self, slide_id: str, a: int, b: int) -> np.ndarray:
        """Patches ``a:b`` of the slide, uint8 (n, s, s, 3)."""
        out = np.empty((b - a, *self.patch_shape(slide_id)), np.uint8)
        self.read_into(slide_id, a, b, out)
        return out

    def _aug(self, slide_id: str, n: int) -> np.ndarray:
        if slide_id not in self._params:
            self._params = {slide_id: np.stack(
                [view_params(self.seed, slide_id, v, n) for v in range(1, self.views)])}
        return self._params[slide_id]

    def _output(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The tensor batch ``shape`` is decoded into: the next ring buffer in a worker."""
        import torch

        if torch.utils.data.get_worker_info() is None:  # in-process: the loop owns what it gets
            return torch.empty(shape, dtype=torch.uint8)
        slot = self._served % self.ring
        self._served += 1
        nbytes = int(np.prod(shape))
        if len(self._buffers) <= slot:
            self._buffers.append(None)
        buf = self._buffers[slot]
        if buf is None or buf.nbytes() < nbytes:  # (the last batch may be shorter: a view)
            buf = self._buffers[slot] = torch.UntypedStorage._new_shared(nbytes)
        return torch.empty(0, dtype=torch.uint8).set_(buf, 0, (nbytes,)).view(shape)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, self.total)
        s = int(np.searchsorted(self.starts, lo, side="right") - 1)
        out = self._output((hi - lo, *self.patch_shape(self.segments[s][0])))
        view, pos, aug = out.numpy(), 0, []
        while lo < hi:
            slide_id, n = self.segments[s]
            a, b = lo - self.starts[s], min(hi, self.starts[s + 1]) - self.starts[s]
            part = view[pos:pos + b - a]
            self.read_into(slide_id, int(a), int(b), part)
            if self.stain is not None:
                for p in part:
                    p[...] = self.stain(p)
            if self.views > 1:
                aug.append(self._aug(slide_id, n)[:, a:b])
            pos, lo, s = pos + b - a, self.starts[s] + b, s + 1
        return {"pixels": out,
                "aug": torch.from_numpy(np.concatenate(aug, axis=1)) if aug else torch.zeros(0),
                "keep": Mapped(out) if self._buffers else None}


def holding(loader: Any) -> Iterator[dict[str, Any]]:
    """The batches of ``loader`` (a DataLoader over ``PatchBatches``), holding the reader buffers
    of the last 2 x ring x workers of them meanwhile (see ``PatchBatches``)."""
    held: collections.deque = collections.deque(maxlen=2 * loader.dataset.ring * max(loader.num_workers, 1))
    for batch in loader:
        held.append(batch.get("keep"))
        yield batch


class Mapped:
    """A worker's shared buffer, passed through DataLoader's pinning untouched (it is neither a
    tensor nor a container), for the consumer to hold (see ``PatchBatches``)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


@dataclass(frozen=True)
class SlideSource:
    """Where one slide's patches are when tile stored coordinates only (``--no-pixels``)."""

    path: str
    mpp0: float  # level-0 µm/px tile used (metadata or --mpp-fallback), from slides.parquet
    xy: np.ndarray  # (n, 2) level-0 corners in patch_index order
    level: int  # as recorded by tile (checked against the recomputed plan)
    size: int


class SlideBatches(PatchBatches):
    """``PatchBatches`` that reads each patch from its slide with tile's read plan (openslide)."""

    def __init__(self, root: Path, segments: list[tuple[str, int]], batch_size: int, *,
                 sources: dict[str, SlideSource], target_mpp: float, **kw: Any):
        super().__init__(root, segments, batch_size, **kw)
        self.sources, self.target_mpp = sources, target_mpp
        self._open: dict[str, tuple[Any, slides.ReadPlan]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_open": {}}

    def _slide(self, slide_id: str) -> tuple[Any, slides.ReadPlan]:
        if slide_id not in self._open:
            for slide, _ in self._open.values():  # one open slide per reader: memory stays flat
                slide.close()
            src = self.sources[slide_id]
            slide = slides.open_slide(src.path)
            plan = slides.plan_read(slide, src.mpp0, self.target_mpp, src.size)
            if plan.level != src.level or plan.out_size != src.size:
                raise ArtifactError(f"slide {slide_id} now reads at level {plan.level}, tile used "
                                    f"{src.level}", path=src.path, fix="re-run `brcatool tile --overwrite`")
            self._open = {slide_id: (slide, plan)}
        return self._open[slide_id]

    def patch_shape(self, slide_id: str) -> tuple[int, ...]:
        size = self.sources[slide_id].size
        return (size, size, 3)

    def read_into(self, slide_id: str, a: int, b: int, out: np.ndarray) -> None:
        slide, plan = self._slide(slide_id)
        for row, (x, y) in zip(out, self.sources[slide_id].xy[a:b], strict=True):
            row[...] = slides.read_patch(slide, int(x), int(y), plan)


def _worker_init(_: int) -> None:
    """A DataLoader reader process: one thread for torch and for zarr's decoding (the workers are
    the parallelism); arrays read through zarr-python (not the store's own layout, see
    ``stores.PatchReader``) decode a read's chunks in batches of a shard, not chunk by chunk."""
    import torch
    import zarr

    torch.set_num_threads(1)
    zarr.config.set({"threading.max_workers": 1, "codec_pipeline.batch_size": stores.PATCH_SHARD})
