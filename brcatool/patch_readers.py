"""Where embed's pixels come from: the patch store, or the slides themselves (``tile --no-pixels``).

Both are map-style datasets whose items are whole batches of consecutive patches (across slides),
for a DataLoader with ``batch_size=None``. ``SlideBatches`` reads the coordinates of
``patches.parquet`` with openslide inside the DataLoader workers, with tile's own read plan
(``slides.plan_read`` + ``slides.read_patch``), so both routes give the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brcatool import slides, stores
from brcatool.artifacts import Workdir
from brcatool.encoders.augment import Macenko, view_params
from brcatool.errors import ArtifactError


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

    def read(self, slide_id: str, a: int, b: int) -> np.ndarray:
        """Patches ``a:b`` of the slide, uint8 (n, s, s, 3)."""
        return np.asarray(self._array(slide_id)[a:b])

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
            pix.append(self.read(slide_id, int(a), int(b)))
            if self.views > 1:
                aug.append(self._aug(slide_id, n)[:, a:b])
            lo, s = self.starts[s] + b, s + 1
        arr = np.concatenate(pix)
        if self.stain is not None:
            arr = np.stack([self.stain(p) for p in arr])
        out = {"pixels": torch.from_numpy(arr)}
        out["aug"] = torch.from_numpy(np.concatenate(aug, axis=1)) if aug else torch.zeros(0)
        return out


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

    def read(self, slide_id: str, a: int, b: int) -> np.ndarray:
        slide, plan = self._slide(slide_id)
        xy = self.sources[slide_id].xy[a:b]
        return np.stack([slides.read_patch(slide, int(x), int(y), plan) for x, y in xy])


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)
