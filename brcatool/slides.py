"""Whole-slide images through openslide: finding slide files, mpp, levels and patch reads.

Everything here works on region reads, never on a whole level 0, so slides of any size fit in
memory. Transparent areas (outside a scan's tiles) are composited onto white, as glass looks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brcatool.errors import InputError
from brcatool.ids import patient_of

#: File endings openslide reads (DICOM slides are folders of .dcm files).
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide",
                  ".bif", ".czi", ".qptiff")
#: Plausible microns per pixel of a microscope scan; outside this the tag is a placeholder
#: (e.g. 72 dpi written by a generic TIFF writer gives 352.8 µm/px).
MPP_RANGE = (0.05, 20.0)
#: A level whose downsample is within this relative distance of the wanted one is read as is.
LEVEL_TOLERANCE = 0.02


# --------------------------------------------------------------------------- naming
def slide_id_for(path: Path) -> str:
    """File name without its extension(s) (a DICOM folder: the folder's name); a symlink's own
    name, not its target's (links often carry the TCGA barcode the target lacks)."""
    if path.is_dir():
        return path.name
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def patient_id_for(slide_id: str) -> str:
    """First 12 characters of a TCGA barcode (``TCGA-XX-XXXX``), else the slide id itself."""
    return patient_of(slide_id)


@dataclass(frozen=True)
class SlideEntry:
    """One slide to tile: its id, its patient and where it lives."""

    slide_id: str
    patient_id: str
    path: Path


def _is_dicom_dir(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() == ".dcm" for p in path.iterdir())


def find_slides(inputs: Iterable[str | Path]) -> list[Path]:
    """Slide files named directly, plus those found recursively under folders.

    Files named directly are kept whatever their ending (a non-slide becomes a failed row
    later, not a crash); folders contribute only files with slide endings.
    """
    found: list[Path] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if not path.exists():
            raise InputError("no such file or folder", path=path,
                             fix="check the slide path (folders are searched recursively)")
        if path.is_file():
            found.append(path)
            continue
        if _is_dicom_dir(path):
            found.append(path)
            continue
        for sub in _walk(path):
            if sub.is_file() and sub.suffix.lower() in SLIDE_SUFFIXES and not sub.name.startswith("."):
                found.append(sub)
            elif sub.is_dir() and _is_dicom_dir(sub):
                found.append(sub)
    seen: set[Path] = set()
    unique = []
    for p in found:
        key = p.resolve()  # one file reached twice (a link and its target) is tiled once ...
        if key not in seen:
            seen.add(key)
            unique.append(Path(os.path.abspath(p)))  # ... under the name it was found by
    return unique


def _walk(root: Path) -> list[Path]:
    """Everything under ``root``, sorted, following symlinked folders (each real folder once)."""
    out: list[Path] = []
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:  # a link loop or a second link to the same folder
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames.sort()
        out.extend(Path(dirpath, n) for n in (*dirnames, *filenames))
    return sorted(out)


def read_slides_table(path: str | Path) -> list[tuple[Path, str | None]]:
    """(path, patient_id or None) rows from a CSV/TSV/Parquet table with a ``path`` column."""
    import polars as pl

    path = Path(path)
    if not path.is_file():
        raise InputError("slides table not found", path=path, fix="check --slides-table")
    try:
        if path.suffix.lower() == ".parquet":
            df = pl.read_parquet(path)
        else:
            sep = "\t" if path.suffix.lower() in (".tsv", ".tab", ".txt") else ","
            df = pl.read_csv(path, separator=sep, infer_schema_length=0)
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad table
        raise InputError(f"cannot read slides table ({str(exc).splitlines()[0]})", path=path) from None
    if "path" not in df.columns:
        raise InputError(f"slides table needs a 'path' column (found {', '.join(df.columns)})",
                         path=path, fix="name the column of slide file paths 'path'")
    patients = df["patient_id"].cast(pl.Utf8).to_list() if "patient_id" in df.columns else None
    rows = []
    for i, p in enumerate(df["path"].cast(pl.Utf8).to_list()):
        if p is None or not p.strip():
            raise InputError(f"row {i + 1} has an empty path", path=path)
        sp = Path(p).expanduser()
        sp = sp if sp.is_absolute() else path.parent / sp
        pid = patients[i] if patients is not None and patients[i] not in (None, "") else None
        rows.append((Path(os.path.abspath(sp)), pid))  # a symlink keeps its own name (the slide id)
    return rows


def make_entries(paths: Sequence[tuple[Path, str | None]]) -> list[SlideEntry]:
    """Entries with ids; patient from the table, else from a TCGA barcode, else the slide id."""
    out = []
    for path, pid in paths:
        sid = slide_id_for(path)
        out.append(SlideEntry(sid, pid or patient_id_for(sid), path))
    return out


# --------------------------------------------------------------------------- opening
def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def open_slide(path: str | Path) -> Any:
    """An ``openslide.OpenSlide`` or an InputError saying why the file is not a readable slide."""
    import openslide

    path = Path(path)
    target = path
    if path.is_dir():  # DICOM: openslide opens any file of the series
        dcm = sorted(p for p in path.iterdir() if p.suffix.lower() == ".dcm")
        target = dcm[0] if dcm else path
    try:
        return openslide.OpenSlide(str(target))
    except openslide.OpenSlideUnsupportedFormatError:
        raise InputError("not a slide format openslide can read", path=path) from None
    except Exception as exc:  # noqa: BLE001 - corrupt files raise many kinds
        raise InputError(f"cannot open slide ({_one_line(exc)})", path=path) from None


def slide_mpp(slide: Any, *, fallback: float | None = None, path: Any = None) -> float:
    """Level-0 µm/px from the slide's metadata, else ``fallback``.

    Missing or implausible metadata (outside MPP_RANGE) uses ``fallback``, else fails with a
    line that names the fix.
    """
    props = slide.properties
    found: float | None = None
    try:
        mx = float(props.get("openslide.mpp-x", "nan"))
        my = float(props.get("openslide.mpp-y", str(mx)))
        if np.isfinite(mx) and np.isfinite(my) and mx > 0 and my > 0:
            found = (mx + my) / 2
    except ValueError:
        found = None
    if found is not None and MPP_RANGE[0] <= found <= MPP_RANGE[1]:
        return found
    if fallback is not None:
        return float(fallback)
    why = "has no mpp metadata" if found is None else (
        f"has implausible mpp {found:.4g} µm/px (outside {MPP_RANGE[0]}-{MPP_RANGE[1]})")
    raise InputError(why, path=path, fix="pass --mpp-fallback VALUE (e.g. 0.5 for a 20x scan)")


# --------------------------------------------------------------------------- reading
def to_rgb(rgba: np.ndarray) -> np.ndarray:
    """RGB uint8 from openslide's RGBA, transparent areas composited onto white."""
    import cv2

    alpha = cv2.extractChannel(rgba, 3)  # ~10x faster than numpy on strided views
    if cv2.minMaxLoc(alpha)[0] == 255:
        return cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)
    a = alpha[..., None].astype(np.uint16)
    out = (rgba[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def read_rgb(slide: Any, x: int, y: int, level: int, w: int, h: int, *, threads: int = 1) -> np.ndarray:
    """RGB region of ``w`` x ``h`` level pixels whose top-left is (x, y) in level-0 pixels.

    An ``openslide.OpenSlide`` is read straight into a numpy buffer (openslide's premultiplied
    ARGB; no PIL image, no copy) and, with ``threads`` > 1, in horizontal bands cut at tile rows,
    read at once (openslide decodes without the GIL): a thumbnail reads ~2x faster on 2 cores. The
    pixels are exactly those of ``read_region`` (tests/test_slides.py).
    """
    x, y, level, w, h = int(x), int(y), int(level), int(w), int(h)
    argb = _read_argb(slide, x, y, level, w, h, threads) if w > 0 and h > 0 else None
    if argb is None:
        return to_rgb(np.asarray(slide.read_region((x, y), level, (w, h))))
    import cv2

    bgra = argb.view(np.uint8).reshape(h, w, 4)  # little-endian ARGB words: B, G, R, A bytes
    if cv2.minMaxLoc(cv2.extractChannel(bgra, 3))[0] == 255:  # opaque: premultiplied = straight
        return cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGB)
    from openslide import _convert

    _convert.argb2rgba(argb)  # un-premultiply in place, as read_region does
    return to_rgb(argb.view(np.uint8).reshape(h, w, 4))


def _read_argb(slide: Any, x: int, y: int, level: int, w: int, h: int, threads: int) -> np.ndarray | None:
    """``openslide_read_region`` into a uint32 ``(h, w)`` array; None when ``slide`` is not an
    ``openslide.OpenSlide`` or this openslide-python lacks the call (the caller then uses
    ``read_region``)."""
    import ctypes

    import openslide
    from openslide import lowlevel

    read = getattr(lowlevel, "_read_region", None)
    if type(slide) is not openslide.OpenSlide or read is None or not hasattr(slide, "_osr") \
            or not 0 <= level < slide.level_count:
        return None
    out = np.empty((h, w), np.uint32)
    d = float(slide.level_downsamples[level])

    def band(a: int, b: int) -> None:  # rows a:b of the region (whole level-0 pixels: see below)
        read(slide._osr, out[a:b].ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)), x,
             y + int(a * d), level, w, b - a)

    cuts = [0, h]
    # bands only where a band's level-0 start maps back to a whole level row exactly
    if threads > 1 and d == int(d) and y % int(d) == 0:
        tile_h = int(slide.properties.get(f"openslide.level[{level}].tile-height", 0) or 0) or 256
        step = -(-max(tile_h, -(-h // threads)) // tile_h) * tile_h  # rows per band, whole tiles
        first = (-(y // int(d))) % tile_h  # the first region row that starts a tile row
        cuts = sorted({0, h, *(c for c in range(first or step, h, step) if 0 < c < h)})
    if len(cuts) == 2:
        band(0, h)
    else:
        from brcatool import threads as pools

        pools.run_all(pools.pool("region-bands", pools.cores(4)), band, cuts[:-1], cuts[1:])
    return out


@dataclass(frozen=True)
class ReadPlan:
    """How to read one patch at a target resolution: which level, how many level pixels."""

    level: int
    read_size: int  # level pixels read per side
    out_size: int  # output pixels per side
    size0: float  # level-0 pixels covered per side
    mpp: float  # effective output µm/px


def plan_read(slide: Any, mpp0: float, target_mpp: float, patch_size: int) -> ReadPlan:
    """Best level for a target resolution: one that matches (no resize) or the next finer one."""
    want = target_mpp / mpp0  # wanted downsample from level 0
    downs = [float(d) for d in slide.level_downsamples]
    fits = [i for i, d in enumerate(downs) if d <= want * (1 + LEVEL_TOLERANCE)]
    level = max(fits, key=lambda i: downs[i]) if fits else 0
    d = downs[level]
    if abs(d - want) <= want * LEVEL_TOLERANCE:
        read_size = patch_size
    else:
        read_size = max(1, int(round(patch_size * want / d)))
    size0 = read_size * d
    return ReadPlan(level, read_size, patch_size, size0, size0 * mpp0 / patch_size)


def read_patch(slide: Any, x: int, y: int, plan: ReadPlan) -> np.ndarray:
    """One (out, out, 3) uint8 patch; resized only when no level matches the target."""
    rgb = read_rgb(slide, x, y, plan.level, plan.read_size, plan.read_size)
    if plan.read_size != plan.out_size:
        import cv2

        interp = cv2.INTER_AREA if plan.read_size > plan.out_size else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (plan.out_size, plan.out_size), interpolation=interp)
    return rgb


def read_thumbnail(slide: Any, max_side: int = 2048, block: int = 4096, *,
                   threads: int = 1) -> tuple[np.ndarray, float]:
    """RGB overview (long side between ``max_side / 2`` and ``max_side``) and its downsample.

    Reads the coarsest level that still gives ``max_side / 2`` px, in blocks, resizing each, so
    a slide without a small pyramid level never gets materialised whole.
    """
    import cv2

    w0, h0 = slide.dimensions
    long0 = max(w0, h0)
    downs = [float(d) for d in slide.level_downsamples]
    enough = [i for i, d in enumerate(downs) if long0 / d >= min(long0, max_side / 2)]
    level = max(enough, key=lambda i: downs[i]) if enough else 0
    d = downs[level]
    want = max(d, long0 / max_side)
    lw, lh = slide.level_dimensions[level]
    scale = d / want  # output px per level px (<= 1)
    ow, oh = max(1, int(round(w0 / want))), max(1, int(round(h0 / want)))
    if scale >= 0.999 and lw * lh <= block * block:
        rgb = read_rgb(slide, 0, 0, level, lw, lh, threads=threads)
        if (lw, lh) != (ow, oh):
            rgb = cv2.resize(rgb, (ow, oh), interpolation=cv2.INTER_AREA)
        return rgb, w0 / ow
    out = np.full((oh, ow, 3), 255, np.uint8)
    for by in range(0, lh, block):
        for bx in range(0, lw, block):
            bw, bh = min(block, lw - bx), min(block, lh - by)
            region = read_rgb(slide, int(bx * d), int(by * d), level, bw, bh, threads=threads)
            x0, y0 = int(round(bx * scale)), int(round(by * scale))
            x1, y1 = min(ow, int(round((bx + bw) * scale))), min(oh, int(round((by + bh) * scale)))
            if x1 > x0 and y1 > y0:
                out[y0:y1, x0:x1] = cv2.resize(region, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    return out, w0 / ow
