"""Files as other tools write them: feature files (CLAM, TRIDENT, STAMP, .pt) for the import tests and
demos, and QuPath GeoJSON exports (0.2/0.3 and 0.4+) for the ROI tests.

Each writer copies its tool's layout: dataset names, dtypes, chunking style and the attribute names
and types the tool stamps (see ``brcatool.interop.h5features`` for the sources), folder names (TRIDENT
``<job>/20x_256px_0px_overlap/{patches,features_<encoder>}``, STAMP ``<out>/<extractor>/``). Values are
drawn float16-exact, so an imported float16 store equals the source exactly.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brcatool.synth.names import assign_subtypes, patient_barcodes, sample_barcode, slide_name


def _save_h5(path: Path, assets: dict[str, np.ndarray], attributes: dict[str, dict[str, Any]] | None = None,
             file_attrs: dict[str, Any] | None = None) -> Path:
    """CLAM ``save_hdf5`` / TRIDENT ``save_h5`` style: resizable datasets chunked one row at a time."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, val in assets.items():
            dset = f.create_dataset(key, shape=val.shape, maxshape=(None,) + val.shape[1:],
                                    chunks=(1,) + val.shape[1:], dtype=val.dtype)
            dset[:] = val
            for k, v in (attributes or {}).get(key, {}).items():
                dset.attrs[k] = v
        for k, v in (file_attrs or {}).items():
            f.attrs[k] = v
    return path


def clam_patch_attrs(name: str, *, patch_size: int = 256, patch_level: int = 1, downsample: float = 2.0,
                     level0: tuple[int, int] = (8192, 8192)) -> dict[str, Any]:
    """What CLAM's ``process_contour`` stamps on ``coords`` in ``patches/<slide>.h5``."""
    dim = (int(level0[0] / downsample), int(level0[1] / downsample))
    return {"patch_size": patch_size, "patch_level": patch_level, "downsample": (downsample, downsample),
            "downsampled_level_dim": dim, "level_dim": dim, "name": name, "save_path": "patches"}


def write_clam(root: Path, slide_id: str, features: np.ndarray, coords: np.ndarray, *,
               attrs: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """CLAM's two files: ``patches/<slide>.h5`` (coords + attributes, int64) and
    ``features/h5_files/<slide>.h5`` (features float32 + coords int32, no attributes)."""
    patches = _save_h5(root / "patches" / f"{slide_id}.h5", {"coords": coords.astype(np.int64)},
                       {"coords": attrs or clam_patch_attrs(slide_id)})
    feats = _save_h5(root / "features" / "h5_files" / f"{slide_id}.h5",
                     {"features": features.astype(np.float32), "coords": coords.astype(np.int32)})
    return patches, feats


def trident_coords_attrs(name: str, *, patch_size: int = 256, mag0: int = 40,
                         target_mag: int = 20) -> dict[str, Any]:
    """TRIDENT ``coords_to_h5`` attributes (patch size at the target magnification and at level 0;
    ``level0_magnification`` is TRIDENT's bucket of the slide's mpp, not a measured value)."""
    return {"patch_size": patch_size, "patch_size_level0": patch_size * mag0 // target_mag,
            "level0_magnification": mag0, "target_magnification": target_mag, "overlap": 0, "name": name,
            "savetodir": f"{target_mag}x_{patch_size}px_0px_overlap"}


def write_trident(root: Path, encoder: str, slide_id: str, features: np.ndarray, coords: np.ndarray, *,
                  attrs: dict[str, Any] | None = None, saveas: str = "h5", tensor: bool = False) -> Path:
    """TRIDENT ``<job>/20x_256px_0px_overlap/features_<encoder>/<slide>.h5`` (``features`` with ``name``,
    ``savetodir`` and ``encoder`` attributes, ``coords`` with :func:`trident_coords_attrs`) and
    ``patches/<slide>_patches.h5``. ``saveas="pt"`` (``--saveas pt``): ``<slide>.pt`` holds the pickled
    numpy array (``torch.save(ndarray)``), or a tensor (``tensor``: older versions)."""
    job = root / "20x_256px_0px_overlap"
    out = job / f"features_{encoder}"
    cattrs = attrs or trident_coords_attrs(slide_id)
    _save_h5(job / "patches" / f"{slide_id}_patches.h5", {"coords": coords.astype(np.int64)},
             {"coords": cattrs})
    if saveas == "pt":
        import torch

        path = out / f"{slide_id}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        feats = features.astype(np.float32)
        torch.save(torch.from_numpy(feats) if tensor else feats, path)
        return path
    return _save_h5(out / f"{slide_id}.h5",
                    {"features": features.astype(np.float32), "coords": coords.astype(np.int64)},
                    {"features": {"name": slide_id, "savetodir": str(out), "encoder": encoder},
                     "coords": cattrs})


def write_stamp(root: Path, slide_id: str, features: np.ndarray, coords_um: np.ndarray, *,
                tile_size_um: float = 256.0, tile_size_px: int = 224, extractor: str = "ctranspath",
                v1: bool = False, version: str = "2.3.0") -> Path:
    """STAMP ``<out>/<extractor>/<slide>.h5``: ``feats`` float16 + ``coords`` (float32 µm) and file
    attributes; ``version`` "2.0.x" names the tile side ``tile_size`` (later ``tile_size_um``). ``v1``
    writes the older layout into ``<out>/`` (coords in px of the 256 µm / 224 px grid, an
    ``augmented`` flag per row, no ``unit``)."""
    import h5py

    path = root / f"{slide_id}.h5" if v1 else root / extractor / f"{slide_id}.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        if v1:
            f["coords"] = (coords_um / (tile_size_um / tile_size_px)).astype(np.float32)
            f["feats"] = features.astype(np.float16)
            f["augmented"] = np.zeros(len(features), dtype=bool)
            f.attrs["extractor"] = f"STAMP-extract-v1.0.0_{extractor}"
        else:
            f["coords"] = coords_um.astype(np.float32)
            f["feats"] = features.astype(np.float16)
            f.attrs["stamp_version"] = version
            f.attrs["extractor"] = extractor
            f.attrs["unit"] = "um"
            f.attrs["tile_size" if version.startswith("2.0") else "tile_size_um"] = tile_size_um
            f.attrs["tile_size_px"] = tile_size_px
            f.attrs["code_hash"] = "0123abcd"
            f.attrs["feat_type"] = "tile"
    return path


def write_pt(root: Path, slide_id: str, features: np.ndarray) -> Path:
    """CLAM ``pt_files/<slide>.pt``: the features tensor alone."""
    import torch

    path = root / "pt_files" / f"{slide_id}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torch.from_numpy(features.astype(np.float32)), path)
    return path


# --------------------------------------------------------------------------- QuPath GeoJSON
#: QuPath 0.2/0.3 wrote the object's kind as the Feature's ``id``; 0.4+ as ``properties.objectType``.
QUPATH_IDS = {"annotation": "PathAnnotationObject", "detection": "PathDetectionObject",
              "cell": "PathCellObject", "tile": "PathTileObject"}


@dataclass
class QuPathObject:
    """One object of a QuPath export: geometry coordinates, its kind and classification."""

    coordinates: list
    kind: str = "annotation"  # annotation | detection | cell | tile
    classes: tuple[str, ...] = ()  # (), ("Tumor",), a derived class ("Tumor", "Stroma"), ("Ignore*",)
    geometry: str = "Polygon"  # or MultiPolygon


def _qupath_feature(obj: QuPathObject, version: str, index: int) -> dict[str, Any]:
    rgb = [200, 0, 0] if obj.classes else [0, 0, 180]
    geom = {"type": obj.geometry, "coordinates": obj.coordinates}
    props: dict[str, Any] = {}
    if version.startswith(("0.2", "0.3")):
        feat: dict[str, Any] = {"type": "Feature", "id": QUPATH_IDS[obj.kind], "geometry": geom}
        if obj.classes:  # colorRGB: packed ARGB as a signed 32-bit int
            argb = (0xFF << 24) | (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]
            props["classification"] = {"name": ": ".join(obj.classes), "colorRGB": argb - (1 << 32)}
        props.update(isLocked=False, measurements=[])
    else:
        feat = {"type": "Feature", "id": str(uuid.UUID(int=index + 1, version=4)), "geometry": geom}
        props["objectType"] = obj.kind
        if len(obj.classes) == 1:
            props["classification"] = {"name": obj.classes[0], "color": rgb}
        elif obj.classes:
            props["classification"] = {"names": list(obj.classes), "color": rgb}
    if obj.kind == "cell":  # a nucleus inside the cell (first ring shrunk towards its first vertex)
        ring = np.asarray(obj.coordinates[0], dtype=np.float64)
        feat["nucleusGeometry"] = {"type": "Polygon",
                                   "coordinates": [(ring[0] + (ring - ring[0]) * 0.5).tolist()]}
    feat["properties"] = props
    return feat


def write_qupath_geojson(path: Path, objects: list[QuPathObject], *, version: str = "0.5") -> Path:
    """``File > Export objects as GeoJSON``: 0.4+ a ``FeatureCollection`` (``objectType``, ``color``,
    derived classes as ``names``); 0.2/0.3 a bare list of Features whose ``id`` is the object class
    (``PathAnnotationObject`` ...), ``colorRGB`` and ``measurements`` lists, no ``objectType``."""
    feats = [_qupath_feature(o, version, i) for i, o in enumerate(objects)]
    old = version.startswith(("0.2", "0.3"))
    obj: Any = feats if old else {"type": "FeatureCollection", "features": feats}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


@dataclass
class ForeignSet:
    """What ``make_foreign_features`` wrote: where to point the importer, and the truth."""

    layout: str
    source: Path  # DIR for import-features
    coords_dir: Path | None  # --coords (clam, pt)
    mpp: float  # level-0 µm/px
    size0: float  # patch side at level 0
    features: dict[str, np.ndarray] = field(default_factory=dict)  # slide -> (N, D) float32
    coords: dict[str, np.ndarray] = field(default_factory=dict)  # slide -> level-0 px (N, 2)
    patients: dict[str, str] = field(default_factory=dict)  # slide -> patient
    subtypes: dict[str, str] = field(default_factory=dict)  # patient -> PAM50 subtype
    expression: Path | None = None  # expression.tsv (genes x samples), when asked for
    clinical: Path | None = None  # clinical.tsv (patient_id, PAM50)


def make_foreign_features(root: str | Path, layout: str, *, patients: int = 6, patches: int = 6,
                          dim: int = 16, mpp: float = 0.25, seed: int = 0, signal: float = 0.0,
                          expression: bool = False, genes: int = 80,
                          variant: str | None = None) -> ForeignSet:
    """One slide per patient (TCGA-like names, PAM50 subtypes) in ``layout`` on a 512 px grid.

    ``signal`` > 0 shifts half the patches of Basal/Her2 patients by that much (something to learn);
    ``expression`` also writes ``tables/expression.tsv`` and ``tables/clinical.tsv`` as
    ``make_cohort`` does, so ``prep-expr`` can follow the import. ``variant``: ``pt`` ``"trident"``
    (TRIDENT ``--saveas pt``: pickled numpy arrays, ``--coords`` its ``patches/``), ``stamp`` a STAMP
    version (``"2.0.0"``: ``tile_size`` for ``tile_size_um``).
    """
    from brcatool.artifacts import write_text
    from brcatool.synth.counts import simulate_counts

    root = Path(root)
    rng = np.random.default_rng(seed)
    pids = sorted(patient_barcodes(patients, rng))
    subtypes = dict(zip(pids, assign_subtypes(patients, rng), strict=True))
    size0 = 512.0  # 256 px at 20x on a 40x (0.25 µm/px) scan
    out = ForeignSet(layout, root, None, mpp, size0, subtypes=subtypes)
    for pid in pids:
        sid = slide_name(pid, 0, rng)
        feats16 = rng.standard_normal((patches, dim)).astype(np.float16)
        if signal and subtypes[pid] in ("Basal", "Her2"):
            feats16[: patches // 2] += np.float16(signal)  # float16 arithmetic: still exact in the store
        feats = feats16.astype(np.float32)
        cells = rng.choice(64, size=patches, replace=False)
        coords = np.stack([(cells % 8) * 512, (cells // 8) * 512], axis=1).astype(np.int64)
        out.features[sid], out.coords[sid], out.patients[sid] = feats, coords, pid
        if layout == "clam":
            write_clam(root, sid, feats, coords)
            out.source, out.coords_dir = root / "features", root / "patches"
        elif layout == "trident":
            write_trident(root, "uni_v1", sid, feats, coords)
        elif layout == "stamp":
            write_stamp(root, sid, feats, coords * mpp, tile_size_um=size0 * mpp, version=variant or "2.3.0")
        elif layout == "pt" and variant == "trident":
            path = write_trident(root, "conch_v15", sid, feats, coords, saveas="pt")
            out.source, out.coords_dir = path.parent, path.parent.parent / "patches"
        elif layout == "pt":
            write_pt(root, sid, feats)
            write_clam(root, sid, feats, coords)
            out.source, out.coords_dir = root / "pt_files", root / "patches"
        else:
            raise ValueError(f"unknown layout {layout!r}")
    if expression:
        counts = simulate_counts([subtypes[p] for p in pids], n_genes=genes, gene_signal=1.0,
                                 rng=np.random.default_rng([seed, 1]), outliers=0, zero_genes=0)
        lines = ["\t".join(["gene", *(sample_barcode(p) for p in pids)])]
        lines += [g + "\t" + "\t".join(map(str, row.tolist())) for g, row in zip(counts.genes, counts.counts,
                                                                                 strict=True)]
        out.expression = write_text(root / "tables" / "expression.tsv", "\n".join(lines) + "\n")
        out.clinical = write_text(root / "tables" / "clinical.tsv", "\n".join(
            ["patient_id\tPAM50"] + [f"{p}\tBRCA.{subtypes[p]}" for p in pids]) + "\n")
    return out
