"""QuPath GeoJSON: patch tiles and tissue outlines out, annotation polygons (regions of interest) in.

QuPath's conventions (File > Import objects / Export as GeoJSON, v0.4+): a ``FeatureCollection`` whose
``Feature``s carry a ``Polygon``/``MultiPolygon`` in level-0 pixel coordinates (origin at the image's
top-left corner) and ``properties`` with ``objectType`` (``annotation``, ``detection``, ``tile``, ...),
optionally ``classification`` ``{"name", "color": [r, g, b]}`` (a derived class: ``{"names": [...]}``),
``measurements`` ``{name: number}``, ``color`` ``[r, g, b]``, ``name`` and ``isLocked``. Unknown
properties are ignored by QuPath. QuPath 0.2/0.3 wrote no ``objectType``: the Feature's top-level
``id`` names the kind (``PathAnnotationObject``, ``PathDetectionObject``, ``PathCellObject``, ...),
classifications as ``{"name", "colorRGB"}``, often a bare list of Features.

As regions of interest only annotations count, and not those of QuPath's *ignored* classes (names
ending in ``*``: ``Ignore*``, ``Region*``); ``classes`` (``tile --roi-class``) keeps only annotations
of those classes (a derived class such as ``Tumor: Stroma`` matches its full name or any part).

Point-in-polygon (``points_in_polygons``) uses the even-odd rule on every ring, so a point in a hole
(an interior ring) is outside; polygons of a slide are united.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brcatool import artifacts
from brcatool.errors import InputError

#: (exterior ring (K, 2), interior rings) in level-0 px
Polygon = tuple[np.ndarray, list[np.ndarray]]

TISSUE_COLOR = [0, 170, 0]
ROI_SUFFIXES = (".geojson", ".json")
#: QuPath 0.2/0.3 Feature ``id`` -> objectType (later versions write ``properties.objectType``)
QUPATH_OBJECT_IDS = {"PathAnnotationObject": "annotation", "PathDetectionObject": "detection",
                     "PathCellObject": "cell", "PathTileObject": "tile", "PathTMACoreObject": "tma_core",
                     "PathRootObject": "root"}
_POINT_BLOCK = 4096  # points tested per block (memory: block x vertices booleans)


# --------------------------------------------------------------------------- writing
def _ring(points: np.ndarray) -> list[list[float]]:
    """One closed ring (see ``_rings``; this is the cheaper call for a few points, e.g. a tile)."""
    v = np.asarray(points, dtype=np.float64)
    if np.array_equal(v, np.round(v)) and np.abs(v).max(initial=0) < 2**53:
        pts = v.astype(np.int64).tolist()
    else:
        pts = [[round(x, 2), round(y, 2)] for x, y in v.tolist()]
    return _closed(pts)


def _closed(pts: list[list[float]]) -> list[list[float]]:
    if pts and pts[0] != pts[-1]:
        pts.append(pts[0])
    return pts


def _rings(v: np.ndarray, lens: Sequence[int]) -> list[list[list[float]]]:
    """Closed GeoJSON rings of the points ``v`` ((N, 2) float), ``lens[k]`` points for ring k, all
    at once (a tissue mask has hundreds of rings; numpy calls per ring cost more than the points).
    A ring of whole numbers is written as JSON integers (the same numbers to any reader, ~3x
    cheaper to list and encode than floats), any other as floats rounded to 2 decimals."""
    lens = np.asarray(lens, dtype=np.int64)
    starts = np.cumsum(lens) - lens
    whole_pt = ((v == np.round(v)) & (np.abs(v) < 2**53)).all(axis=1)
    whole = np.ones(len(lens), bool)
    some = lens > 0
    whole[some] = np.logical_and.reduceat(whole_pt, starts[some])
    with np.errstate(invalid="ignore"):  # (points of other rings may not fit an int: unused)
        as_int = v.astype(np.int64).tolist() if whole.any() else []
    out: list[list[list[float]]] = []
    for k, (a, n) in enumerate(zip(starts.tolist(), lens.tolist(), strict=True)):
        out.append(_closed(as_int[a:a + n] if whole[k] else
                           [[round(x, 2), round(y, 2)] for x, y in v[a:a + n].tolist()]))
    return out


def square(x: float, y: float, side: float) -> list[list[list[float]]]:
    """Polygon coordinates of an axis-aligned square with top-left (x, y) (one closed ring)."""
    return [_ring(np.array([[x, y], [x + side, y], [x + side, y + side], [x, y + side]], dtype=np.float64))]


def feature(coordinates: list, properties: dict[str, Any], *, kind: str = "Polygon") -> dict[str, Any]:
    return {"type": "Feature", "id": str(uuid.uuid4()),
            "geometry": {"type": kind, "coordinates": coordinates}, "properties": properties}


def collection(features: list[dict[str, Any]], properties: dict[str, Any] | None = None) -> dict[str, Any]:
    """A FeatureCollection; ``properties`` is a foreign member (kept for scripts, ignored by QuPath)."""
    out: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if properties:
        out["properties"] = properties
    return out


def colors(values: np.ndarray, cmap: str = "inferno") -> list[list[int]]:
    """RGB colours of values scaled from the slide's lowest to highest (as the PNG heatmaps draw them;
    all equal: the middle colour)."""
    import matplotlib

    v = np.asarray(values, dtype=np.float64)
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    scaled = (v - lo) / (hi - lo) if hi - lo > 1e-12 else np.full(v.shape, 0.5)
    rgba = matplotlib.colormaps[cmap](scaled)
    return [[int(round(c * 255)) for c in row[:3]] for row in rgba]


def tile_collection(xy0: np.ndarray, size0: np.ndarray | float, values: np.ndarray, *, measurement: str,
                    names: Sequence[str] | None = None, extra: dict[str, float] | None = None,
                    properties: dict[str, Any] | None = None) -> dict[str, Any]:
    """One locked ``tile`` object per patch: level-0 square, ``measurements[measurement]`` = the value,
    a colour from it; ``extra`` measurements (e.g. the slide's predicted probability) on every tile."""
    xy0 = np.asarray(xy0, dtype=np.float64).reshape(-1, 2)
    sides = np.broadcast_to(np.asarray(size0, dtype=np.float64), (len(xy0),))
    values = np.asarray(values, dtype=np.float64)
    rgb = colors(values)
    feats = []
    for i, ((x, y), s, v) in enumerate(zip(xy0, sides, values, strict=True)):
        props: dict[str, Any] = {"objectType": "tile", "isLocked": True, "color": rgb[i],
                                 "measurements": {measurement: float(v), **(extra or {})}}
        if names is not None:
            props["name"] = names[i]
        feats.append(feature(square(x, y, s), props))
    return collection(feats, properties)


def mask_annotations(mask: np.ndarray, scale: float, *, name: str = "Tissue",
                     color: Sequence[int] = TISSUE_COLOR) -> dict[str, Any]:
    """Tissue outlines as ``annotation`` polygons: ``cv2.findContours`` (outer contours and their holes,
    RETR_CCOMP) on the mask, through the centres of its boundary pixels, scaled by ``scale`` (level-0 px
    per mask px). Holes become interior rings."""
    import cv2

    contours, hierarchy = cv2.findContours(np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_CCOMP,
                                           cv2.CHAIN_APPROX_SIMPLE)
    feats = []
    if hierarchy is not None:
        parent = hierarchy[0][:, 3]
        rings = _rings((np.concatenate(contours)[:, 0, :] + 0.5) * scale, [len(c) for c in contours])
        holes: dict[int, list[list[list[float]]]] = {}
        for j, p in enumerate(parent.tolist()):
            if p != -1 and len(contours[j]) >= 3:
                holes.setdefault(p, []).append(rings[j])
        for i, cnt in enumerate(contours):
            if parent[i] != -1 or len(cnt) < 3:
                continue
            feats.append(feature([rings[i], *holes.get(i, [])],
                                 {"objectType": "annotation", "isLocked": True, "name": name,
                                  "classification": {"name": name, "color": list(color)}}))
    return collection(feats)


def write(path: str | Path, obj: dict[str, Any]) -> Path:
    """Write compact GeoJSON atomically (temporary name, then rename)."""
    return artifacts.write_text(path, json.dumps(obj, separators=(",", ":")) + "\n")


# --------------------------------------------------------------------------- reading
def _features(obj: Any, path: Path) -> Iterable[dict[str, Any]]:
    if isinstance(obj, list):
        for item in obj:
            yield from _features(item, path)
    elif isinstance(obj, dict) and obj.get("type") == "FeatureCollection":
        yield from _features(obj.get("features") or [], path)
    elif isinstance(obj, dict) and obj.get("type") == "Feature":
        yield obj
    elif isinstance(obj, dict) and ("coordinates" in obj or "geometries" in obj):
        yield {"type": "Feature", "geometry": obj, "properties": {}}
    else:
        raise InputError("is not GeoJSON (expected a FeatureCollection, Feature or list of Features)",
                         path=path, fix="export annotations with QuPath's File > Export objects as GeoJSON")


def _polygons(geom: dict[str, Any] | None, path: Path) -> list[Polygon]:
    if not geom:
        return []
    kind = geom.get("type")
    if kind == "GeometryCollection":
        return [p for g in geom.get("geometries", []) for p in _polygons(g, path)]
    parts = [geom.get("coordinates")] if kind == "Polygon" else (
        geom.get("coordinates") or [] if kind == "MultiPolygon" else [])
    out = []
    for rings in parts:
        try:
            arrs = [np.asarray(r, dtype=np.float64)[:, :2] for r in rings]
        except (TypeError, ValueError, IndexError):
            raise InputError(f"has a malformed {kind} (rings must be lists of [x, y])", path=path) from None
        if arrs and len(arrs[0]) >= 3:
            out.append((arrs[0], [a for a in arrs[1:] if len(a) >= 3]))
    return out


def object_type(feat: dict[str, Any]) -> str:
    """QuPath's kind of a Feature: ``objectType`` (0.4+, or ``object_type``), else the 0.2/0.3 top-level
    ``id`` (``PathCellObject`` ...); ``annotation`` only when neither says otherwise."""
    props = feat.get("properties") or {}
    kind = props.get("objectType", props.get("object_type"))
    if kind is None:
        kind = QUPATH_OBJECT_IDS.get(str(feat.get("id")), "annotation")
    return str(kind).lower()


def class_names(feat: dict[str, Any]) -> list[str]:
    """The classification's name(s): ``[]`` unclassified, ``[name]``, or a derived class's parts."""
    cls = (feat.get("properties") or {}).get("classification")
    if isinstance(cls, str):
        return [cls]
    if not isinstance(cls, dict):
        return []
    names = cls.get("names")
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    return [str(cls["name"])] if cls.get("name") is not None else []


def is_ignored_class(names: Sequence[str]) -> bool:
    """QuPath's ignored classes (``Ignore*``, ``Region*``, any name ending in ``*``)."""
    return any(n.strip().endswith("*") for n in names)


def _class_matches(names: Sequence[str], classes: Sequence[str]) -> bool:
    return bool({": ".join(names), *names} & set(classes))


def read_polygons(path: str | Path, classes: Sequence[str] = ()) -> list[Polygon]:
    """Annotation polygons of a QuPath GeoJSON export: objects of other types (detections, cells,
    tiles), annotations of ignored classes (``*``), of other classes than ``classes`` (when given) and
    non-area geometries are skipped."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read ({exc})", path=path) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"is not valid JSON ({exc.msg} at line {exc.lineno})", path=path) from None
    polys: list[Polygon] = []
    seen: set[str] = set()
    for feat in _features(obj, path):
        if object_type(feat) != "annotation":
            continue
        names = class_names(feat)
        seen.add(": ".join(names) or "(unclassified)")
        if is_ignored_class(names) or (classes and not _class_matches(names, classes)):
            continue
        polys += _polygons(feat.get("geometry"), path)
    if not polys:
        wanted = f" of class {', '.join(classes)}" if classes else ""
        found = f" (annotation classes: {', '.join(sorted(seen))})" if seen else ""
        raise InputError(f"holds no annotation polygons{wanted}{found}", path=path,
                         fix="draw area annotations (not points or lines, not of an ignored class such as "
                         "Ignore*) in QuPath and export them" + (", or check --roi-class" if classes else ""))
    return polys


def find_roi_file(roi_dir: str | Path, slide_id: str) -> Path | None:
    """``<slide_id>.geojson`` / ``.json``, also as QuPath names exports after the image file
    (``<slide_id>.svs.geojson``)."""
    from brcatool.slides import SLIDE_SUFFIXES

    roi_dir = Path(roi_dir)
    for suffix in ROI_SUFFIXES:
        for stem in [slide_id] + [slide_id + s for s in SLIDE_SUFFIXES]:
            if (roi_dir / f"{stem}{suffix}").is_file():
                return roi_dir / f"{stem}{suffix}"
    return None


# --------------------------------------------------------------------------- point in polygon
def _in_ring(pts: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Even-odd crossing test of every point against one ring (closed or not)."""
    x0, y0 = ring[:, 0], ring[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    out = np.zeros(len(pts), dtype=bool)
    for s in range(0, len(pts), _POINT_BLOCK):
        px, py = pts[s:s + _POINT_BLOCK, :1], pts[s:s + _POINT_BLOCK, 1:]
        spans = (y0 > py) != (y1 > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            xcross = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
        out[s:s + _POINT_BLOCK] = np.count_nonzero(spans & (px < xcross), axis=1) % 2 == 1
    return out


def points_in_polygons(points: np.ndarray, polygons: Sequence[Polygon]) -> np.ndarray:
    """Whether each (x, y) lies inside any polygon: inside its exterior ring and in none of its holes."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    inside = np.zeros(len(pts), dtype=bool)
    for exterior, holes in polygons:
        hit = _in_ring(pts, exterior)
        for hole in holes:
            hit &= ~_in_ring(pts, hole)
        inside |= hit
    return inside


def roi_keep(roi_dir: str | Path, slide_id: str, xy0: np.ndarray, size0: float,
             classes: Sequence[str] = ()) -> np.ndarray | None:
    """Mask of candidates (level-0 top-left ``xy0``, side ``size0``) whose centre lies in the slide's
    ROI polygons (of ``classes`` when given); None when the slide has no ROI file."""
    path = find_roi_file(roi_dir, slide_id)
    if path is None:
        return None
    centres = np.asarray(xy0, dtype=np.float64).reshape(-1, 2) + size0 / 2.0
    return points_in_polygons(centres, read_polygons(path, classes))


def roi_filter(roi_dir: str | Path, missing: str, slide_id: str, xy0: np.ndarray, frac: np.ndarray,
               size0: float, classes: Sequence[str] = (),
               ) -> tuple[np.ndarray, np.ndarray, str | None, str | None]:
    """``tile --roi``: (kept candidates, their tissue fractions, a status for the slide or None, a note).

    The candidates already passed the tissue mask (``--min-tissue``), so what is kept is the
    intersection of tissue and ROI. No ROI file: ``missing="whole"`` keeps all, ``"skip"`` none
    (status ``no_roi``)."""
    keep = roi_keep(roi_dir, slide_id, xy0, size0, classes)
    if keep is None:
        if missing == "skip":
            note = f"no ROI file for this slide in {roi_dir} (--roi-missing skip)"
            return xy0[:0], frac[:0], "no_roi", note
        return xy0, frac, None, None
    note = None if keep.any() else "no tissue candidate inside the ROI annotations"
    return xy0[keep], frac[keep], None, note


def write_tissue(qc_dir: str | Path, slide_id: str, mask: np.ndarray, scale: float) -> Path:
    """``qc/<slide>.geojson``: the tissue mask's outlines as QuPath annotations (level-0 px)."""
    from brcatool.names import file_name

    return write(Path(qc_dir) / f"{file_name(slide_id)}.geojson", mask_annotations(mask, scale))
