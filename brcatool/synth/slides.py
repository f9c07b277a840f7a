"""H&E-like pyramidal TIFF slides, rendered band by band so memory stays flat.

A slide is defined by a few coarse random fields (tissue shape, cellularity, stroma shade on a
grid of ``GRID`` px) plus a list of nuclei; pixels are rendered in horizontal bands of
``BAND`` rows and streamed to tifffile as 256 px JPEG tiles. Only one band of level 0 is ever
held in memory; the lower levels (1/16 of the pixels and less) are kept whole.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

GRID = 16  # px per cell of the coarse fields; also the truth-mask downsample
BAND = 1024  # rows rendered at once (multiple of TILE and GRID)
TILE = 256
PAD = 2  # coarse cells of padding so bands interpolate identically at their seams

#: How strongly each subtype shifts nuclear density/size (multiplied by image_signal).
SUBTYPE_SCORE = {"LumA": 0.0, "LumB": 0.45, "Her2": 0.75, "Basal": 1.0, "Normal": -0.35}

_BG = np.array([243, 241, 244], np.float32)
_STROMA_LIGHT = np.array([247, 200, 226], np.float32)
_STROMA_DARK = np.array([222, 118, 172], np.float32)
_EPITHELIUM = np.array([214, 150, 196], np.float32)
_NUCLEUS = np.array([72, 38, 122], np.float32)
_DEBRIS = np.array([120, 96, 112], np.float32)
_T_LEVELS, _E_LEVELS = 32, 7  # stroma shade x epithelium levels of the colour lookup table
_BG_INDEX = _T_LEVELS * _E_LEVELS  # 224..230: glass with grain 0..6


def _palette() -> np.ndarray:
    """A 256-entry RGB lookup table: (epithelium, shade) blends of stroma, then glass."""
    t = np.linspace(0, 1, _T_LEVELS, dtype=np.float32)[None, :, None]
    e = (np.arange(_E_LEVELS, dtype=np.float32) / (_E_LEVELS - 1) * 0.8)[:, None, None]
    stroma = _STROMA_LIGHT + t * (_STROMA_DARK - _STROMA_LIGHT)
    tissue = (stroma + e * (_EPITHELIUM - stroma)).reshape(-1, 3)
    glass = _BG[None, :] + np.arange(-3, 4, dtype=np.float32)[:, None]
    lut = np.zeros((256, 3), np.float32)
    lut[: _BG_INDEX] = tissue
    lut[_BG_INDEX: _BG_INDEX + 7] = glass
    return np.clip(lut, 0, 255).round().astype(np.uint8)[None]


_LUT = _palette()


@dataclass(frozen=True)
class SlideSpec:
    """Everything that determines one slide's pixels."""

    width: int
    height: int
    subtype: str
    seed: tuple[int, ...]
    image_signal: float = 1.0
    blank: bool = False
    mpp: float = 0.5
    level_downsample: int = 4
    quality: int = 85


@dataclass(frozen=True)
class SlideResult:
    levels: list[tuple[int, int]]  # (width, height) per level
    tissue_fraction: float  # share of truth-mask cells that hold tissue


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Zero-mean, unit-std noise varying over about ``cell`` grid cells."""
    h, w = shape
    small = rng.standard_normal((math.ceil(h / cell) + 3, math.ceil(w / cell) + 3))
    big = cv2.resize(small.astype(np.float32), (int((small.shape[1]) * cell),
                                                int((small.shape[0]) * cell)),
                     interpolation=cv2.INTER_CUBIC)[:h, :w]
    return (big - big.mean()) / (big.std() + 1e-6)


class _Fields:
    """The coarse fields and nuclei of one slide (small: about pixels / GRID**2 values)."""

    def __init__(self, spec: SlideSpec) -> None:
        rng = np.random.default_rng(spec.seed)
        gh, gw = math.ceil(spec.height / GRID), math.ceil(spec.width / GRID)
        self.shape = (gh, gw)
        yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
        tissue = np.full((gh, gw), -1.0, np.float32)
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(0.25, 0.75) * gh, rng.uniform(0.2, 0.8) * gw
            a, b = rng.uniform(0.12, 0.3) * gw, rng.uniform(0.12, 0.3) * gh
            t = rng.uniform(0, np.pi)
            u = ((xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)) / a
            v = (-(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)) / b
            tissue = np.maximum(tissue, 1.0 - np.sqrt(u * u + v * v))
        tissue += 0.28 * _smooth_noise(rng, (gh, gw), 10) + 0.08 * _smooth_noise(rng, (gh, gw), 3)
        if spec.blank:
            tissue[:] = -1.0
        self.tissue = tissue
        self.cellularity = 1 / (1 + np.exp(-2.2 * _smooth_noise(rng, (gh, gw), 5)))
        self.shade = 1 / (1 + np.exp(-1.5 * _smooth_noise(rng, (gh, gw), 4)))
        self.padded = np.pad(np.stack([self.tissue, self.cellularity, self.shade], axis=-1),
                             ((PAD, PAD), (PAD, PAD), (0, 0)), mode="edge").astype(np.float32)
        self.nuclei = self._nuclei(rng, spec)
        self.debris = self._debris(rng, spec)

    def _nuclei(self, rng: np.random.Generator, spec: SlideSpec) -> np.ndarray:
        """Rows of (x, y, ax, ay, angle, darkness), sorted by y."""
        score = SUBTYPE_SCORE[spec.subtype] * spec.image_signal
        density = 1 / 900 * (1 + 0.3 * score) * math.exp(rng.normal(0, 0.25))  # per tissue px
        radius = 5.5 * (1 + 0.08 * score) * math.exp(rng.normal(0, 0.05))
        pleo = max(0.05, 0.18 + 0.12 * score)
        inside = self.tissue > 0
        lam = np.where(inside, density * GRID * GRID * (0.25 + 1.5 * self.cellularity ** 2), 0)
        per_cell = rng.poisson(lam)
        cy, cx = np.nonzero(per_cell)
        reps = per_cell[cy, cx]
        n = int(reps.sum())
        x = (np.repeat(cx, reps) + rng.random(n)) * GRID
        y = (np.repeat(cy, reps) + rng.random(n)) * GRID
        size = radius * np.exp(rng.normal(0, pleo, n))
        elong = np.exp(np.abs(rng.normal(0, 0.25, n)))
        nuclei = np.stack([x, y, size * elong, size / elong, rng.uniform(0, 180, n),
                           rng.uniform(150, 255, n)], axis=1)
        return nuclei[np.argsort(nuclei[:, 1], kind="stable")]

    def _debris(self, rng: np.random.Generator, spec: SlideSpec) -> np.ndarray:
        """A few small specks on the glass outside the tissue: (x, y, radius)."""
        n = int(rng.integers(3, 10))
        pts = np.stack([rng.uniform(0, spec.width, n), rng.uniform(0, spec.height, n),
                        rng.uniform(1.5, 5, n)], axis=1)
        cells = self.tissue[(pts[:, 1] // GRID).astype(int), (pts[:, 0] // GRID).astype(int)]
        return pts[cells < -0.1]

    def band(self, y0: int, rows: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tissue, cellularity and shade upsampled (bicubic) to level-0 rows [y0, y0+rows).

        Each band crops the padded fields with PAD cells of margin, so seams match exactly.
        """
        c0 = y0 // GRID
        crop = self.padded[c0: c0 + math.ceil(rows / GRID) + 2 * PAD + 1]
        big = cv2.resize(crop, (crop.shape[1] * GRID, crop.shape[0] * GRID),
                         interpolation=cv2.INTER_CUBIC)
        m = PAD * GRID
        big = big[m: m + rows, m: m + width]
        return big[..., 0], big[..., 1], big[..., 2]


def _render_band(spec: SlideSpec, f: _Fields, y0: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB pixels and the boolean tissue mask of rows [y0, y0+rows) at level 0.

    Every pixel first gets an index into a 256-colour table (glass with grain, or stroma by
    shade and epithelium level), so one lookup colours the band; debris and nuclei are then
    drawn and blended only where they are. Everything stays uint8 where it can, for speed.
    """
    w = spec.width
    rng = np.random.default_rng((*spec.seed, 1, y0))
    tissue, cell, shade = f.band(y0, rows, w)
    mask = tissue > 0
    grain = rng.integers(0, 7, size=(rows, w), dtype=np.uint8)
    if mask.any():
        fibres = _fibres(spec.seed, y0, rows, w)
        t = cv2.convertScaleAbs(cv2.addWeighted(shade, 170.0, fibres, 0.8, -50.0))  # 0..255
        t = cv2.add(t, grain) >> 3  # 0..31
        e = np.minimum(cv2.convertScaleAbs(cell, alpha=2.5 * (_E_LEVELS - 1),
                                           beta=-1.25 * (_E_LEVELS - 1)), _E_LEVELS - 1)
        index = np.where(mask, e * _T_LEVELS + t, grain + _BG_INDEX).astype(np.uint8)
    else:
        index = grain + np.uint8(_BG_INDEX)
    img = cv2.LUT(cv2.merge([index, index, index]), _LUT)
    for x, y, r in f.debris:
        if y0 - 8 <= y < y0 + rows + 8:
            cv2.circle(img, (int(x), int(y) - y0), max(1, int(r)), _DEBRIS.tolist(), -1, cv2.LINE_AA)
    if not mask.any():
        return img, mask

    layer = np.zeros((rows, w), np.uint8)
    nuc = f.nuclei
    lo, hi = np.searchsorted(nuc[:, 1], [y0 - 40, y0 + rows + 40])
    for x, y, ax, ay, ang, dark in nuc[lo:hi]:
        cv2.ellipse(layer, (int(x), int(y) - y0), (max(1, int(ax)), max(1, int(ay))),
                    float(ang), 0, 360, int(dark), -1, cv2.LINE_AA)
    layer = cv2.GaussianBlur(layer, (3, 3), 0)
    layer[~mask] = 0
    hit = np.flatnonzero(layer)  # nuclei cover a small share of the band: blend only there
    alpha = layer.ravel()[hit].astype(np.float32)[:, None] * (1 / 255)
    flat = img.reshape(-1, 3)
    flat[hit] = (flat[hit] * (1 - alpha) + _NUCLEUS * alpha).astype(np.uint8)
    return img, mask


def _fibres(seed: tuple[int, ...], y0: int, rows: int, w: int) -> np.ndarray:
    """Horizontal stroma streaks (float32, 0..255) from per-GRID-row seeds.

    Seeding by absolute row block (not by band) makes the noise identical across band
    seams, so no line shows where two bands meet.
    """
    blocks = [np.random.default_rng((*seed, 3, b)).integers(0, 256, (GRID, w // 8 + 2), np.uint8)
              for b in range(y0 // GRID, math.ceil((y0 + rows) / GRID))]
    noise = np.concatenate(blocks)[:rows]
    return cv2.resize(noise, ((w // 8 + 2) * 8, rows), interpolation=cv2.INTER_LINEAR)[:, :w] \
        .astype(np.float32)


def _tiles(img: np.ndarray) -> Iterator[np.ndarray]:
    """Row-major 256 px tiles of a band or level, edge tiles padded by replication."""
    h, w = img.shape[:2]
    for y in range(0, h, TILE):
        for x in range(0, w, TILE):
            t = img[y: y + TILE, x: x + TILE]
            if t.shape[0] != TILE or t.shape[1] != TILE:
                t = np.pad(t, ((0, TILE - t.shape[0]), (0, TILE - t.shape[1]), (0, 0)), mode="edge")
            yield t


def level_sizes(width: int, height: int, factor: int) -> list[tuple[int, int]]:
    """At least 3 levels, going on until the smallest is <= 512 px on its long side."""
    sizes = [(width, height)]
    while len(sizes) < 3 or max(sizes[-1]) > 512:
        w, h = sizes[-1]
        if min(w, h) // factor < 1:
            break
        sizes.append((w // factor, h // factor))
    return sizes


def aperio_description(width: int, height: int, mpp: float, quality: int) -> str:
    return (f"Aperio Image Library v10.0.50\n{width}x{height} [0,0 {width}x{height}] "
            f"({TILE}x{TILE}) JPEG/RGB Q={quality}|AppMag = 20|MPP = {mpp}|"
            "ScanScope ID = SYNTH|Filename = synthetic")


def write_slide(path: Path, spec: SlideSpec, *, svs: bool = False) -> tuple[SlideResult, np.ndarray]:
    """Write a pyramidal tiled JPEG TIFF (Aperio-style if ``svs``) and return its truth mask.

    The truth mask has one pixel per GRID x GRID block of level 0 (ceil of the size), 255 where
    at least half the block is tissue.
    """
    import tifffile

    f = _Fields(spec)
    sizes = level_sizes(spec.width, spec.height, spec.level_downsample)
    fac = spec.level_downsample
    level1_rows: list[np.ndarray] = []
    truth_rows: list[np.ndarray] = []

    def level0() -> Iterator[np.ndarray]:
        for y0 in range(0, spec.height, BAND):
            rows = min(BAND, spec.height - y0)
            img, mask = _render_band(spec, f, y0, rows)
            if rows // fac:  # a last band of < fac rows adds no row to level 1
                level1_rows.append(cv2.resize(img, (sizes[1][0], rows // fac),
                                              interpolation=cv2.INTER_AREA))
            bh, bw = math.ceil(rows / GRID), math.ceil(spec.width / GRID)
            padded = np.zeros((bh * GRID, bw * GRID), np.uint8)
            padded[:rows, : spec.width] = mask.view(np.uint8) * np.uint8(255)
            blocks = cv2.resize(padded, (bw, bh), interpolation=cv2.INTER_AREA)  # block means
            truth_rows.append(np.where(blocks >= 128, 255, 0).astype(np.uint8))
            yield from _tiles(img)

    common = dict(dtype=np.uint8, tile=(TILE, TILE), photometric="rgb", compression="jpeg",
                  compressionargs={"level": spec.quality}, resolutionunit="CENTIMETER",
                  metadata=None, software=False, maxworkers=1)
    px_per_cm = 1e4 / spec.mpp
    with tifffile.TiffWriter(path, bigtiff=spec.width * spec.height > 2**31) as tw:
        desc = aperio_description(spec.width, spec.height, spec.mpp, spec.quality) if svs else None
        tw.write(level0(), shape=(spec.height, spec.width, 3), resolution=(px_per_cm, px_per_cm),
                 description=desc, subfiletype=0, **common)
        level = np.concatenate(level1_rows, axis=0)
        for i, (w, h) in enumerate(sizes[1:], start=1):
            if level.shape[:2] != (h, w):
                level = cv2.resize(level, (w, h), interpolation=cv2.INTER_AREA)
            scale = spec.width / w
            tw.write(_tiles(level), shape=level.shape, resolution=(px_per_cm / scale, px_per_cm / scale),
                     subfiletype=1, **common)
            if i + 1 < len(sizes):
                level = cv2.resize(level, sizes[i + 1], interpolation=cv2.INTER_AREA)
    truth = np.concatenate(truth_rows, axis=0)
    return SlideResult(levels=sizes, tissue_fraction=float((truth > 0).mean())), truth


def corrupt_tile(path: Path, *, page: int = 0, tile: int = 0) -> None:
    """Damage one JPEG tile of a tiled TIFF in place (its entropy-coded data overwritten): the file
    still opens, and reading a region over that tile fails in openslide, as a scan with a bad tile does."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[page].dataoffsets[tile], tif.pages[page].databytecounts[tile]
    with open(path, "r+b") as f:  # past the JPEG headers (quantisation and Huffman tables)
        f.seek(offset + count // 2)
        f.write(b"\xff\x00" * min(40, count // 4))
