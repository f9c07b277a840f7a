"""Ragged per-patient bags of patch features, packed end to end with offsets and never padded.

The dense cohort array ``(patients, views, max_patches, dim)`` grows with the *largest* patient; at
``tile --sampling all`` (thousands to tens of thousands of patches per slide) it does not fit in
memory. ``RaggedBags`` holds the same features as one ``(views, total_patches, dim)`` float16 array
(patient ``p`` owns rows ``offsets[p]:offsets[p + 1]``) in a memory-mapped ``.npy`` cache beside the
feature store, built once from the Zarr arrays slide by slide. A batch reads only the rows it
uses (``gather``: positioned reads of the file, not page faults on the map), so the resident memory
of ``train`` stays at about a batch, whatever the cohort's size.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from brcatool import artifacts, stores
from brcatool.artifacts import Workdir
from brcatool.errors import ArtifactError


class RaggedBags:
    """Patients' patch features, ragged; indexable by a patient permutation like the dense array."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray, order: np.ndarray | None = None):
        self.data = data  # (V, total, D), usually a read-only np.memmap
        self.offsets = np.asarray(offsets, dtype=np.int64)  # (P0 + 1,)
        self.order = np.arange(len(self.offsets) - 1) if order is None else np.asarray(order, np.int64)
        self._fd: int | None = None  # read-only descriptor of the cache file, opened on first use

    # ------------------------------------------------------------------ the dense array's surface
    @property
    def lengths(self) -> np.ndarray:
        return (self.offsets[1:] - self.offsets[:-1])[self.order]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The shape of the dense array this replaces (nothing of that size is ever allocated)."""
        v, _, d = self.data.shape
        return (len(self.order), v, max(int(self.lengths.max(initial=0)), 1), d)

    @property
    def dtype(self) -> Any:
        return self.data.dtype

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, idx: Any) -> RaggedBags:
        """Patients ``idx`` (an index array or slice), sharing the data."""
        return RaggedBags(self.data, self.offsets, self.order[idx])

    # ------------------------------------------------------------------ reading
    def gather(self, patients: np.ndarray, view: np.ndarray, pos: np.ndarray,
               valid: np.ndarray | None = None) -> np.ndarray:
        """``out[i, j] = features of patient patients[i], view view[i, j], patch pos[i, j]``.

        Positions outside a patient's bag (padding; or ``valid`` False) are zeros, as in the dense
        layout.
        """
        patients = np.asarray(patients, np.int64)
        start = self.offsets[self.order[patients]]
        n = self.lengths[patients]
        pos = np.asarray(pos, np.int64)
        ok = (pos < n[:, None]) if valid is None else (np.asarray(valid, bool) & (pos < n[:, None]))
        rows = start[:, None] + np.where(ok, pos, 0)
        view = np.broadcast_to(np.asarray(view, np.int64), rows.shape)
        out = np.empty((*rows.shape, self.data.shape[2]), dtype=self.data.dtype)
        for v in np.unique(view):  # one read per view, rows sorted
            sel = view == v
            r = rows[sel]
            order = np.argsort(r, kind="stable")
            got = np.empty((len(r), self.data.shape[2]), dtype=self.data.dtype)
            got[order] = self._rows(int(v), r[order])
            out[sel] = got
        out[~ok] = 0  # padding reads as zeros, exactly like the dense array
        return out

    def _rows(self, v: int, rows: np.ndarray) -> np.ndarray:
        """Rows (sorted) of view ``v``. From a file: positioned reads of each run of consecutive
        rows, never the memory map, whose fault-around would map ~64 KiB per random row into this
        process (RSS growing with the cohort, which is what the bags are for)."""
        if not isinstance(self.data, np.memmap) or self.data.filename is None:
            return np.asarray(self.data[v, rows])
        d = self.data.shape[2]
        item = d * self.data.dtype.itemsize
        base = self.data.offset + v * self.data.shape[1] * item
        uniq, inverse = np.unique(rows, return_inverse=True)
        buf = np.empty((len(uniq), d), dtype=self.data.dtype)
        breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
        if self._fd is None:
            self._fd = os.open(self.data.filename, os.O_RDONLY)
        for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(uniq)], strict=True):
            view = memoryview(buf[a:b]).cast("B")
            got = os.preadv(self._fd, [view], base + int(uniq[a]) * item)
            if got != len(view):
                raise ArtifactError("is shorter than its header says", path=self.data.filename,
                                    fix="delete it; the next train rebuilds it")
        return buf[inverse.reshape(-1)]

    def dense(self) -> np.ndarray:
        """The padded ``(P, V, N, D)`` array (tests and small cohorts only)."""
        p, v, n, d = self.shape
        out = np.zeros((p, v, n, d), dtype=self.data.dtype)
        for i, k in enumerate(self.order):
            a, b = self.offsets[k], self.offsets[k + 1]
            out[i, :, : b - a] = self.data[:, a:b]
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None}  # a descriptor does not travel to another process

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


def slide_features(wd: Workdir, encoder: str, group: Any, slide_id: str, n: int, views: int,
                   dim: int) -> np.ndarray:
    """One slide's ``(views+, n, dim)`` features, checked against what the index says."""
    arr = np.asarray(stores.member(group, slide_id)[...])
    if arr.shape[1] != n or arr.shape[2] != dim or arr.shape[0] < views:
        raise ArtifactError(f"slide {slide_id} has features {arr.shape}, the index says "
                            f"({views}+, {n}, {dim})", path=wd.features_zarr(encoder),
                            fix=f"re-run `brcatool embed -w {wd.root} --overwrite`")
    return arr


def _key(encoder: str, identity: dict[str, Any], slides: list[tuple[str, int]], manifest: Path) -> str:
    man = artifacts.read_json(manifest) if manifest.is_file() else {}
    blob = json.dumps({"encoder": encoder, "identity": identity, "slides": slides,
                       "made": man.get("fingerprint") or man.get("finished")}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_bags(wd: Workdir, encoder: str, per_patient: dict[int, list[tuple[int, int]]],
              slide_ids: list[str], identity: dict[str, Any], n_patients: int, *,
              progress: bool = False) -> RaggedBags:
    """The cohort's bags, memory-mapped from ``features/<encoder>/bags/<key>.npy`` (built if absent).

    ``per_patient[p]`` lists ``(slide k, n_patches)`` in bag order, as ``load_cohort`` builds it.
    """
    from rich.progress import Progress

    V, D = int(identity["views"]), int(identity["dim"])
    offsets = np.zeros(n_patients + 1, dtype=np.int64)
    for p in range(n_patients):
        offsets[p + 1] = offsets[p] + sum(n for _, n in per_patient.get(p, []))
    order = [(slide_ids[k], n) for p in range(n_patients) for k, n in per_patient.get(p, [])]
    key = _key(encoder, identity, order, wd.features_dir(encoder) / "manifest.json")
    path = wd.features_dir(encoder) / "bags" / f"{key}.npy"
    total = int(offsets[-1])
    if not path.is_file():
        group = stores.feature_group(wd, encoder)
        with artifacts.atomic_path(path) as tmp, Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task("packing feature bags", total=len(order))
            # plain positioned writes, not a writable memory map: written pages of a map count
            # in this process's RSS until it ends, which is what the cache exists to avoid
            rows = max(total, 1)
            with open(tmp, "wb") as fh:
                np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(
                    np.dtype(np.float16)), "fortran_order": False, "shape": (V, rows, D)})
                head = fh.tell()
                fh.truncate(head + V * rows * D * 2)
                at = 0
                for sid, n in order:
                    arr = slide_features(wd, encoder, group, sid, n, V, D)
                    for v in range(V):
                        os.pwrite(fh.fileno(), np.ascontiguousarray(arr[v], np.float16).tobytes(),
                                  head + (v * rows + at) * D * 2)
                    at += n
                    bar.advance(task)
    data = np.load(path, mmap_mode="r")
    if data.shape != (V, max(total, 1), D):
        raise ArtifactError(f"holds {data.shape}, expected {(V, total, D)}", path=path,
                            fix="delete it; the next train rebuilds it")
    return RaggedBags(data, offsets)
