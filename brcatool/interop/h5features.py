"""Readers of per-slide patch-feature files written by other tools, one per layout, in a registry.

Every reader turns one file into a :class:`SlideFeatures`: features ``(N, D)``, level-0 top-left
pixel coordinates ``(N, 2)`` and the patch geometry (side at level 0, side as encoded, level, and the
level-0 µm/px where the file records it). Layouts, as their tools write them:

- ``clam`` (CLAM ``extract_features_fp.py``): ``<slide>.h5`` with ``features`` float32 ``(N, D)`` and
  ``coords`` int ``(N, 2)``, level-0 px. CLAM's patching step (``create_patches_fp.py``) stamps
  ``patch_size``, ``patch_level``, ``downsample``, ``level_dim``, ... on ``coords``; its feature files
  carry no attributes, so they are taken from ``--coords`` (CLAM's ``patches/`` folder) or
  ``--patch-size``. Looks in ``h5_files/`` when DIR itself holds no ``.h5``.
- ``trident`` (TRIDENT ``features_<encoder>/<slide>.h5``): ``features`` (attributes ``encoder``,
  ``name``, ``savetodir``) + ``coords`` (level-0 px) with ``patch_size``, ``patch_size_level0``,
  ``level0_magnification``, ``target_magnification``, ``overlap``, ``name``, ``savetodir`` on
  ``coords`` (no slide width/height). ``level0_magnification`` is a bucket of the slide's mpp (< 0.3:
  40, < 0.6: 20, ...), so the µm/px 10 / magnification derived from it is a guess: the importer prefers
  ``--mpp``, the slides table or the slide file, and records ``mpp_source``. DIR may be the job folder
  when it holds exactly one ``features_*`` folder.
- ``stamp`` (KatherLab STAMP, ``<out>/<extractor>/<slide>.h5``): ``feats`` float16 + ``coords`` with
  file attributes ``unit`` (``um``), ``tile_size_um`` (STAMP 2.0: ``tile_size``), ``tile_size_px``,
  ``extractor``; coordinates are level-0 µm, so the slide's µm/px is needed (``--mpp``). Older STAMP
  files (no ``unit``; ``augmented`` rows) hold coordinates in px of the 256 µm / 224 px tile grid;
  augmented rows are dropped. Files of several extractors under DIR are refused.
- ``pt`` (CLAM ``pt_files/<slide>.pt``, TRIDENT ``--saveas pt``): a tensor or a pickled numpy array
  ``(N, D)`` (read with ``weights_only=True``, numpy's array classes allowed); coordinates from
  ``--coords`` (``<slide>.h5`` or ``<slide>_patches.h5`` with a ``coords`` dataset).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brcatool.errors import BrcaError, InputError

STAMP_V1_TILE_UM, STAMP_V1_TILE_PX = 256.0, 224  # the tile grid of STAMP v1 (no `unit` attribute)


@dataclass(frozen=True)
class ReadOptions:
    """What the files may not say: level-0 µm/px, a folder of coordinate files, a patch side."""

    mpp: float | None = None  # level-0 µm/px (``--mpp`` or the slides table); wins over attributes
    coords_dir: Path | None = None  # CLAM patches/ or TRIDENT patches/ (coords + attributes)
    patch_size: int | None = None  # level-0 px per patch side, when no attribute gives it


@dataclass
class Geometry:
    """Patch geometry of one slide: side at level 0 and as encoded, the level read, level-0 mpp."""

    size0: float
    out_size: int
    level: int = 0
    mpp0: float | None = None
    width0: int | None = None
    height0: int | None = None
    mpp_source: str | None = None  # "magnification": 10 / TRIDENT's level0_magnification bucket (a guess)


@dataclass
class SlideFeatures:
    slide_id: str
    path: Path
    features: np.ndarray  # (N, D) float32
    coords: np.ndarray  # (N, 2) int64, level-0 px, top-left corners
    geometry: Geometry
    extractor: str | None = None  # the tool's name of the feature extractor, when recorded
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Layout:
    """One foreign layout: how to find its files under DIR and read one of them."""

    name: str
    suffix: str
    description: str
    read: Callable[[str, Path, ReadOptions], SlideFeatures]
    subdir: str | None = None  # looked into when DIR holds no file with ``suffix``
    recursive: bool = False  # STAMP mirrors the slide folder's tree
    locate: Callable[[Path], Path] | None = None  # the file folder inside a job folder (TRIDENT)
    check: Callable[[Path, list[Path]], None] | None = None  # refuses a mixed set of files (STAMP)

    def find(self, root: Path) -> list[tuple[str, Path]]:
        """(slide id, file) pairs, sorted; the slide id is the file name without its suffix."""
        root = Path(root).expanduser()
        if not root.is_dir():
            raise InputError("not a folder", path=root, fix="pass the folder holding the feature files")
        files = _files(root, self.suffix, self.recursive)
        if not files and self.subdir and (root / self.subdir).is_dir():
            files = _files(root / self.subdir, self.suffix, False)
        if not files and self.locate is not None:
            files = _files(self.locate(root), self.suffix, False)
        if files and self.check is not None:
            self.check(root, files)
        return [(p.name[: -len(self.suffix)], p) for p in files]


def _files(root: Path, suffix: str, recursive: bool) -> list[Path]:
    found = root.rglob(f"*{suffix}") if recursive else root.glob(f"*{suffix}")
    return sorted(p for p in found if p.is_file() and not p.name.startswith("."))


def _trident_features_dir(root: Path) -> Path:
    dirs = sorted(p for p in root.glob("*/features_*") if p.is_dir()) + sorted(
        p for p in root.glob("features_*") if p.is_dir())
    if len(dirs) == 1:
        return dirs[0]
    if not dirs:
        return root
    names = ", ".join(str(d.relative_to(root)) for d in dirs[:4])
    raise InputError(f"holds several TRIDENT feature folders ({names})", path=root,
                     fix="pass one features_<encoder> folder as DIR")


def _stamp_one_extractor(root: Path, files: list[Path]) -> None:
    """STAMP writes one subfolder per extractor: refuse a DIR whose files come from several (the
    ``extractor`` attribute, else the top-level subfolder)."""
    import h5py

    groups: dict[str, list[Path]] = {}
    for path in files:
        try:
            with h5py.File(path, "r") as h5:
                name = h5.attrs.get("extractor")
        except OSError:
            continue  # unreadable: its own failed row later
        rel = path.relative_to(root).parts
        key = str(_plain(name)) if name is not None else (f"folder {rel[0]}" if len(rel) > 1 else "")
        groups.setdefault(key, []).append(path)
    if len(groups) > 1:
        shown = "; ".join(f"{k or '(none)'}: {len(v)} file(s), e.g. {v[0].relative_to(root)}"
                          for k, v in sorted(groups.items()))
        raise InputError(f"holds STAMP features of {len(groups)} extractors ({shown})", path=root,
                         fix="pass the extractor's folder (e.g. DIR/<extractor>) as DIR")


LAYOUTS: dict[str, Layout] = {}


def register(layout: Layout) -> Layout:
    LAYOUTS[layout.name] = layout
    return layout


def get_layout(name: str) -> Layout:
    if name not in LAYOUTS:
        raise InputError(f"unknown feature layout {name!r}", fix=f"use one of: {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


# --------------------------------------------------------------------------- HDF5 access
def _plain(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value (bytes decoded, numpy unwrapped)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.dtype.kind in "OS" else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _attrs(obj: Any) -> dict[str, Any]:
    return {str(k): _plain(v) for k, v in obj.attrs.items()}


def _open_h5(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"is not a readable HDF5 file ({' '.join(str(exc).split())[:120]})", path=path,
                         fix="re-export it, or remove it from DIR") from None


def _dataset(h5: Any, name: str, path: Path) -> np.ndarray:
    import h5py

    obj = h5.get(name)
    if not isinstance(obj, h5py.Dataset):
        raise InputError(f"has no '{name}' dataset (found: {', '.join(sorted(h5.keys())) or 'nothing'})",
                         path=path, fix="check --format (clam/trident: features+coords, stamp: feats+coords)")
    return np.asarray(obj[()])


def _number(attrs: dict[str, Any], key: str) -> float | None:
    value = attrs.get(key)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    try:
        out = float(value) if value not in (None, "None") else None
    except (TypeError, ValueError):
        return None
    return out if out is not None and np.isfinite(out) else None


# --------------------------------------------------------------------------- geometry
def geometry_from_attrs(attrs: dict[str, Any], opts: ReadOptions, path: Path) -> Geometry:
    """Patch geometry from TRIDENT or CLAM ``coords`` attributes, else ``opts.patch_size``."""
    ps = _number(attrs, "patch_size")
    mag0, mag = _number(attrs, "level0_magnification"), _number(attrs, "target_magnification")
    size0 = _number(attrs, "patch_size_level0") or (ps * mag0 / mag if ps and mag0 and mag else None)
    if size0 is not None and ps is not None:  # TRIDENT (older files: no patch_size_level0)
        return Geometry(size0=float(size0), out_size=int(ps), level=0, mpp0=10.0 / mag0 if mag0 else None,
                        mpp_source="magnification" if mag0 else None)
    if ps is not None and _number(attrs, "patch_level") is not None:  # CLAM
        level = int(_number(attrs, "patch_level"))
        ds = _number(attrs, "downsample")
        if ds is None and level != 0:
            raise InputError(f"coords attributes give patch_level {level} but no downsample", path=path,
                             fix="pass --patch-size (the patch side in level-0 px)")
        ds = ds or 1.0
        extra = _number(attrs, "custom_downsample") or 1.0
        dims = attrs.get("level_dim")
        w0 = h0 = None
        if isinstance(dims, (list, tuple)) and len(dims) == 2:
            w0, h0 = int(round(float(dims[0]) * ds)), int(round(float(dims[1]) * ds))
        return Geometry(size0=ps * extra * ds, out_size=int(ps), level=level, width0=w0, height0=h0)
    if opts.patch_size:
        return Geometry(size0=float(opts.patch_size), out_size=int(opts.patch_size), level=0)
    raise InputError("coords carry no patch_size/patch_level attributes", path=path,
                     fix="pass --coords (the tool's patches/ folder) or --patch-size (level-0 px)")


def _coords_file(opts: ReadOptions, slide_id: str, path: Path) -> Path:
    if opts.coords_dir is None:
        raise InputError("needs coordinates from another file", path=path,
                         fix="pass --coords DIR with <slide>.h5 or <slide>_patches.h5 coordinate files")
    for name in (f"{slide_id}.h5", f"{slide_id}_patches.h5"):
        if (Path(opts.coords_dir) / name).is_file():
            return Path(opts.coords_dir) / name
    raise InputError(f"no coordinate file for slide {slide_id} ({slide_id}.h5 or {slide_id}_patches.h5)",
                     path=opts.coords_dir, fix="check --coords")


def _read_coords_file(opts: ReadOptions, slide_id: str,
                      path: Path) -> tuple[np.ndarray, dict[str, Any], Path]:
    cpath = _coords_file(opts, slide_id, path)
    with _open_h5(cpath) as h5:
        coords = _dataset(h5, "coords", cpath)
        attrs = _attrs(h5["coords"])
    return coords, attrs, cpath


def _finish(slide_id: str, path: Path, features: np.ndarray, coords: np.ndarray, geom: Geometry,
            opts: ReadOptions, *, extractor: str | None = None, attrs: dict[str, Any] | None = None,
            ) -> SlideFeatures:
    """Shape, finiteness and size checks shared by every layout; the one-line errors name the file."""
    if features.ndim != 2:
        raise InputError(f"features have shape {features.shape}, expected (patches, dim)", path=path)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise InputError(f"coords have shape {coords.shape}, expected (patches, 2)", path=path)
    if len(coords) != len(features):
        raise InputError(f"{len(features)} feature rows but {len(coords)} coordinates", path=path,
                         fix="features and coords must come from the same extraction")
    if len(features) == 0:
        raise InputError("holds no patches", path=path)
    if features.dtype.kind not in "fiu" or coords.dtype.kind not in "fiu":
        raise InputError(f"non-numeric data (features {features.dtype}, coords {coords.dtype})", path=path)
    bad = int((~np.isfinite(features)).sum())
    if bad:
        raise InputError(f"{bad} NaN/inf feature values", path=path, fix="re-extract this slide")
    if np.abs(features).max() > np.finfo(np.float16).max:
        raise InputError("feature values exceed the float16 range of the feature store", path=path)
    if not np.isfinite(coords).all():
        raise InputError("NaN/inf coordinates", path=path)
    if geom.size0 <= 0 or geom.out_size <= 0:
        raise InputError(f"patch size {geom.size0} is not positive", path=path)
    if opts.mpp is not None:
        geom.mpp0, geom.mpp_source = opts.mpp, None
    xy = np.rint(coords.astype(np.float64)).astype(np.int64)
    return SlideFeatures(slide_id, path, features.astype(np.float32), xy, geom, extractor, attrs or {})


# --------------------------------------------------------------------------- the layouts
def _read_features_coords(slide_id: str, path: Path, opts: ReadOptions) -> SlideFeatures:
    """CLAM and TRIDENT: ``features`` + ``coords``, geometry from the attributes on ``coords``."""
    with _open_h5(path) as h5:
        features = _dataset(h5, "features", path)
        coords = _dataset(h5, "coords", path)
        attrs = _attrs(h5["coords"])
        encoder = _attrs(h5["features"]).get("encoder")  # TRIDENT stamps it on the features dataset
    try:
        geom = geometry_from_attrs(attrs, ReadOptions(), path)
    except InputError:
        if opts.coords_dir is not None:  # CLAM feature files: attributes live in the patches file
            _, cattrs, cpath = _read_coords_file(opts, slide_id, path)
            geom, attrs = geometry_from_attrs(cattrs, opts, cpath), cattrs
        else:
            geom = geometry_from_attrs(attrs, opts, path)
    return _finish(slide_id, path, features, coords, geom, opts, attrs=attrs,
                   extractor=str(encoder) if encoder else None)


def _read_stamp(slide_id: str, path: Path, opts: ReadOptions) -> SlideFeatures:
    with _open_h5(path) as h5:
        feats = _dataset(h5, "feats", path)
        coords = _dataset(h5, "coords", path).astype(np.float64)
        attrs = _attrs(h5)
        augmented = np.asarray(h5["augmented"][()], dtype=bool) if "augmented" in h5 else None
    if augmented is not None and len(augmented) == len(feats):
        feats = feats[~augmented]
        if len(coords) == len(augmented):
            coords = coords[~augmented]
    if opts.mpp is None:
        raise InputError("STAMP files do not record the slide's µm/px", path=path,
                         fix="pass --mpp (level-0 µm/px) or an mpp column in --slides-table")
    unit = str(attrs.get("unit", "")).lower()
    tile_um = _number(attrs, "tile_size_um") or _number(attrs, "tile_size")  # STAMP 2.0: tile_size (µm)
    tile_px = _number(attrs, "tile_size_px") or STAMP_V1_TILE_PX
    if unit in ("um", "µm", "micron", "microns"):
        if tile_um is None:  # the 256 µm default belongs to v1 files only (no unit)
            raise InputError("unit 'um' but no tile_size_um (or STAMP 2.0 tile_size) attribute: the tile "
                             "side in µm is unknown", path=path, fix="re-extract this slide with STAMP 2.x")
        coords0 = coords / opts.mpp
    elif not unit:  # STAMP v1: px of the tile grid (256 µm / 224 px unless the file says otherwise)
        tile_um = tile_um or STAMP_V1_TILE_UM
        coords0 = coords * (tile_um / tile_px) / opts.mpp
    else:
        raise InputError(f"coordinate unit {unit!r} is not known", path=path, fix="expected 'um'")
    tile_px = int(tile_px)
    geom = Geometry(size0=tile_um / opts.mpp, out_size=tile_px, level=0)
    extractor = attrs.get("extractor")
    return _finish(slide_id, path, feats, coords0, geom, opts,
                   extractor=str(extractor) if extractor else None, attrs=attrs)


def _numpy_safe_globals() -> list[Any]:
    """What unpickling a numpy array needs (TRIDENT ``--saveas pt`` saves ``torch.save(ndarray)``):
    the reconstructor under its numpy 2 and numpy 1 names, ndarray, dtype and its classes."""
    core = getattr(np, "_core", None) or np.core
    rebuild = core.multiarray._reconstruct
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [rebuild, (rebuild, "numpy.core.multiarray._reconstruct"),
            (rebuild, "numpy._core.multiarray._reconstruct"), np.ndarray, np.dtype, *dtypes]


def _read_pt(slide_id: str, path: Path, opts: ReadOptions) -> SlideFeatures:
    import torch

    try:  # still weights_only: numpy's array classes are the only globals allowed
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise InputError(f"cannot read as a torch tensor or numpy array ({type(exc).__name__})",
                         path=path) from None
    if isinstance(obj, dict):
        obj = obj.get("features", obj.get("feats"))
    if isinstance(obj, torch.Tensor):
        features = obj.detach().float().cpu().numpy()
    elif isinstance(obj, np.ndarray) and obj.dtype.kind in "fiu":
        features = obj.astype(np.float32)
    else:
        raise InputError("does not hold a features tensor or array", path=path,
                         fix="save it with torch.save(tensor) or torch.save(ndarray)")
    coords, attrs, cpath = _read_coords_file(opts, slide_id, path)
    return _finish(slide_id, path, features, coords, geometry_from_attrs(attrs, opts, cpath), opts,
                   attrs=attrs)


register(Layout("clam", ".h5", "CLAM extract_features_fp: features + coords (attributes from --coords)",
                _read_features_coords, subdir="h5_files"))
register(Layout("trident", ".h5", "TRIDENT features_<encoder>/: features + coords with TRIDENT attributes",
                _read_features_coords, locate=_trident_features_dir))
register(Layout("stamp", ".h5", "KatherLab STAMP: feats + coords (µm; needs --mpp)", _read_stamp,
                recursive=True, check=_stamp_one_extractor))
register(Layout("pt", ".pt", "torch .pt feature tensors or numpy arrays + --coords .h5 files", _read_pt,
                subdir="pt_files"))


def read_slide(layout: str | Layout, slide_id: str, path: Path, opts: ReadOptions) -> SlideFeatures:
    """Read one file; any failure is a :class:`BrcaError` naming the file (never a traceback)."""
    lay = layout if isinstance(layout, Layout) else get_layout(layout)
    try:
        return lay.read(slide_id, path, opts)
    except BrcaError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise InputError(f"cannot read ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})",
                         path=path) from None

