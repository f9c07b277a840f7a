"""Whole-patch reads and writes straight from and to the shard files of the Zarr v3 patch arrays.

zarr-python reads and writes anything else; this is the path of the patch data itself: tile
creates each patch array (its zarr.json, as zarr-python writes it) and writes each shard file
here, and embed's DataLoader workers read them here. Through zarr-python, a sharded write costs
~0.7 ms of Python per patch on top of the Blosc encode (a 35-patch slide: ~25 ms, more than its
patch reads), and a read ~0.3 ms per 256 px patch against ~0.015 ms for the LZ4 decode itself,
which capped one reader process at ~3,000 patches/s and held a GPU embed of ResNet-50 (bf16,
H200) to half the model's speed. Here each shard file is written in one go, or read with one
``pread`` per contiguous run of chunks, its index checked, and every chunk decoded by numcodecs'
Blosc straight into the caller's buffer. The files written are byte-identical to zarr-python's
(tests/test_shards.py; tile's recorded digests).

The layout is the Zarr v3 sharding codec's (``sharding_indexed``, index at the end): the shard
``c/<k>/0/0/0`` holds its chunks, in order from offset 0, then ``chunks_per_shard`` pairs of
little-endian uint64 ``(offset, nbytes)`` (both 2**64-1 for an absent chunk, read as the fill
value), then the CRC32C of those pairs. ``ShardedPatches.open`` accepts only arrays whose
metadata is exactly what ``stores`` writes (checked field by field) and returns None for anything
else, which the caller then reads or writes with zarr-python.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brcatool import threads
from brcatool.zarr_io import zarr_json

EMPTY = 2**64 - 1  # an absent chunk's offset and nbytes in a shard index
_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}  # zarr's names -> numcodecs' Blosc values
_BLOSC_HEADER = 16  # version, versionlz, flags, typesize, nbytes, blocksize, cbytes (uint32 LE)


class ShardError(ValueError):
    """A shard file that does not hold what its index or metadata says."""


@dataclass
class ShardedPatches:
    """A uint8 ``(n, s, s, 3)`` patch array stored one patch per chunk in shards of ``per_shard``."""

    path: Path
    shape: tuple[int, ...]
    per_shard: int
    blosc: dict[str, Any] = field(default_factory=dict)  # the chunk codec's configuration

    @classmethod
    def open(cls, path: str | Path) -> ShardedPatches | None:
        """The array at ``path`` if its metadata is the patch store's layout, else None."""
        path = Path(path)
        try:
            meta = json.loads((path / "zarr.json").read_bytes())
        except (OSError, ValueError):
            return None
        if not _is_patch_layout(meta):
            return None
        blosc = meta["codecs"][0]["configuration"]["codecs"][1].get("configuration", {})
        return cls(path, tuple(meta["shape"]), meta["chunk_grid"]["configuration"]["chunk_shape"][0], blosc)

    def write_shard(self, k: int, patches: np.ndarray) -> None:
        """Encode and write shard ``k`` whole: ``patches`` are all of its patches (uint8)."""
        import google_crc32c
        from numcodecs import Blosc

        n = min(self.per_shard, self.shape[0] - k * self.per_shard)
        if n <= 0 or patches.shape != (n, *self.shape[1:]) or patches.dtype != np.uint8:
            raise ValueError(f"shard {k} holds {max(n, 0)} patches of {self.shape[1:]}, got "
                             f"{patches.dtype} {patches.shape}")
        cfg = self.blosc  # (every field present: checked by _is_patch_layout)
        codec = Blosc(cname=cfg["cname"], clevel=cfg["clevel"], shuffle=_SHUFFLE[cfg["shuffle"]],
                      blocksize=cfg["blocksize"])
        # Blosc releases the GIL off the main thread: the patches are encoded on a few threads
        chunks = list(_encoders().map(lambda p: codec.encode(np.ascontiguousarray(p)), patches))
        index = np.full((self.per_shard, 2), EMPTY, "<u8")
        lengths = np.array([len(c) for c in chunks], "<u8")
        index[:n, 0] = np.concatenate([np.zeros(1, "<u8"), np.cumsum(lengths, dtype="<u8")[:-1]])
        index[:n, 1] = lengths
        raw = index.tobytes()
        file = self.path / "c" / str(k) / "0" / "0" / "0"
        file.parent.mkdir(parents=True, exist_ok=True)
        with open(file, "wb") as f:  # (inside the array's temporary folder: renamed in when complete)
            f.writelines([*chunks, raw, google_crc32c.value(raw).to_bytes(4, "little")])

    @property
    def patch_bytes(self) -> int:
        return int(np.prod(self.shape[1:]))

    def read_into(self, a: int, b: int, out: np.ndarray) -> None:
        """Patches ``a:b`` into ``out`` (C-contiguous uint8, shape ``(b - a, *shape[1:])``)."""
        n = self.shape[0]
        if not 0 <= a <= b <= n:
            raise IndexError(f"patches {a}:{b} out of range for {n}")
        if out.shape != (b - a, *self.shape[1:]) or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous uint8 {(b - a, *self.shape[1:])}, got "
                             f"{out.dtype} {out.shape}")
        flat = out.reshape(b - a, self.patch_bytes)
        k = a // self.per_shard
        while a < b:
            lo = a - k * self.per_shard
            hi = min(b - k * self.per_shard, self.per_shard)
            self._read_shard(k, lo, hi, flat[:hi - lo])
            flat, a, k = flat[hi - lo:], a + hi - lo, k + 1

    def _read_shard(self, k: int, lo: int, hi: int, out: np.ndarray) -> None:
        from numcodecs.blosc import decompress

        file = self.path / "c" / str(k) / "0" / "0" / "0"
        try:
            fd = os.open(file, os.O_RDONLY)
        except FileNotFoundError:
            raise ShardError(f"shard file {file.name!r} of shard {k} is missing") from None
        try:
            size = os.fstat(fd).st_size
            index = _index(fd, size, self.per_shard, k)[lo:hi]
            absent = (index[:, 0] == EMPTY) & (index[:, 1] == EMPTY)
            if absent.any():
                out[absent] = 0  # the fill value
            rows = np.flatnonzero(~absent)
            if not rows.size:
                return
            starts, lengths = index[rows, 0], index[rows, 1]
            limit = size - (16 * self.per_shard + 4)  # where the index begins
            if ((starts > limit) | (lengths > limit - np.minimum(starts, limit))).any():
                raise ShardError(f"shard {k}: its index points past the data of a {size}-byte file")
            ends = starts + lengths  # (no overflow: both are within the file now)
            first, last = int(starts.min()), int(ends.max())
            view = _buffer(last - first)  # reused: no fresh pages to fault in per read
            got = os.preadv(fd, [view], first)  # one read for the whole run of chunks
            if got != last - first:
                raise ShardError(f"shard {k}: short read ({got} of {last - first} bytes)")
            for row, start, length in zip(rows.tolist(), (starts - first).tolist(), lengths.tolist(),
                                          strict=True):
                chunk = view[start:start + length]
                if length < _BLOSC_HEADER:
                    raise ShardError(f"shard {k}: chunk {lo + row} is {length} bytes")
                nbytes, cbytes = np.frombuffer(chunk[4:16], "<u4")[[0, 2]].tolist()
                if nbytes != self.patch_bytes or cbytes != length:
                    raise ShardError(f"shard {k}: chunk {lo + row} says {nbytes} bytes ({cbytes} "
                                     f"compressed), expected {self.patch_bytes} ({length})")
                decompress(chunk, out[row])
        finally:
            os.close(fd)


def create_patch_array(path: str | Path, n: int, size: int, per_shard: int, blosc: dict[str, Any],
                       attributes: dict[str, Any]) -> ShardedPatches:
    """A new, empty patch array at ``path``: its zarr.json, byte for byte what zarr-python writes for
    ``zarr.create_array(shape=(n, size, size, 3), dtype=uint8, chunks=(1, size, size, 3),
    shards=(per_shard, size, size, 3), compressors=BloscCodec(**blosc), attributes=attributes)``
    (tests/test_shards.py), so tile never imports zarr-python. ``blosc``: every field of the codec's
    configuration, in zarr's order (typesize, cname, clevel, shuffle, blocksize)."""
    meta = {"shape": [n, size, size, 3], "data_type": "uint8",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [per_shard, size, size, 3]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0,
            "codecs": [{"name": "sharding_indexed", "configuration": {
                "chunk_shape": [1, size, size, 3],
                "codecs": [{"name": "bytes"}, {"name": "blosc", "configuration": dict(blosc)}],
                "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                                 {"name": "crc32c"}],
                "index_location": "end"}}],
            "attributes": dict(attributes), "zarr_format": 3, "node_type": "array",
            "storage_transformers": []}
    if not _is_patch_layout(meta):
        raise ValueError(f"not a patch array layout: {n} x {size} px, {per_shard} per shard, {blosc}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "zarr.json").write_bytes(zarr_json(meta))
    return ShardedPatches(path, (n, size, size, 3), per_shard, dict(blosc))


def _encoders() -> ThreadPoolExecutor:
    """This process's threads for encoding shard chunks (as many as cores, at most 4)."""
    return threads.pool("shard-encode", threads.cores(4))


_SCRATCH = threading.local()  # one read buffer per thread, whichever arrays it reads


def _buffer(n: int) -> memoryview:
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or len(buf) < n:
        buf = _SCRATCH.buf = bytearray(max(n, 1 << 20))
    return memoryview(buf)[:n]


def _index(fd: int, size: int, per_shard: int, k: int) -> np.ndarray:
    """The shard's ``(per_shard, 2)`` uint64 index, its CRC32C checked."""
    import google_crc32c

    length = 16 * per_shard + 4
    if size < length:
        raise ShardError(f"shard {k} is {size} bytes, shorter than its index ({length})")
    raw = os.pread(fd, length, size - length)
    if google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
        raise ShardError(f"shard {k}: its index fails its CRC32C checksum")
    return np.frombuffer(raw[:-4], "<u8").reshape(per_shard, 2)


def _is_patch_layout(meta: dict[str, Any]) -> bool:
    """True when ``meta`` (a zarr.json) is exactly the layout ``stores`` writes for patches."""
    try:
        shape = meta["shape"]
        grid = meta["chunk_grid"]
        keys = meta["chunk_key_encoding"]
        (codec,) = meta["codecs"]
        cfg = codec["configuration"]
        inner = [c["name"] for c in cfg["codecs"]]
        index = cfg["index_codecs"]
        return (meta.get("zarr_format") == 3 and meta.get("node_type") == "array"
                and meta.get("data_type") == "uint8" and meta.get("fill_value") == 0
                and not meta.get("storage_transformers")
                and len(shape) == 4 and shape[3] == 3 and shape[1] == shape[2]
                and grid["name"] == "regular"
                and grid["configuration"]["chunk_shape"][1:] == shape[1:]
                and grid["configuration"]["chunk_shape"][0] >= 1
                and keys["name"] == "default" and keys.get("configuration", {}).get("separator", "/") == "/"
                and codec["name"] == "sharding_indexed" and cfg.get("index_location", "end") == "end"
                and cfg["chunk_shape"] == [1, *shape[1:]]
                and inner == ["bytes", "blosc"]
                and _blosc_ok(cfg["codecs"][1].get("configuration", {}))
                and [c["name"] for c in index] == ["bytes", "crc32c"]
                and index[0].get("configuration", {}).get("endian", "little") == "little")
    except (KeyError, TypeError, ValueError, AttributeError):
        return False


def _blosc_ok(cfg: dict[str, Any]) -> bool:
    """A Blosc configuration written out in full (zarr-python always does; a missing field would
    mean zarr's own defaults, zstd and bitshuffle, which ``write_shard`` must not guess)."""
    return (cfg.get("typesize") == 1 and cfg.get("shuffle") in _SHUFFLE and isinstance(cfg.get("cname"), str)
            and isinstance(cfg.get("clevel"), int) and isinstance(cfg.get("blocksize"), int))
