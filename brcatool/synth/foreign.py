"""Feature files as other tools write them (CLAM, TRIDENT, STAMP, .pt), for the import tests and demos.

Each writer copies its tool's HDF5 layout: dataset names, dtypes, chunking style and the attribute
names and types the tool stamps (see ``brcatool.interop.h5features`` for the sources). Values are
drawn float16-exact, so an imported float16 store equals the source exactly.
"""

from __future__ import annotations

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


def trident_coords_attrs(name: str, *, patch_size: int = 256, mag0: int = 40, target_mag: int = 20,
                         level0: tuple[int, int] = (8192, 8192)) -> dict[str, Any]:
    """TRIDENT ``coords_to_h5`` attributes (patch size at the target magnification and at level 0)."""
    return {"patch_size": patch_size, "patch_size_level0": patch_size * mag0 // target_mag,
            "level0_magnification": mag0, "target_magnification": target_mag, "overlap": 0, "name": name,
            "savetodir": "20x_256px_0px_overlap", "level0_width": level0[0], "level0_height": level0[1]}


def write_trident(root: Path, encoder: str, slide_id: str, features: np.ndarray, coords: np.ndarray, *,
                  attrs: dict[str, Any] | None = None) -> Path:
    """TRIDENT ``<job>/20x_256px_0px_overlap/features_<encoder>/<slide>.h5``."""
    out = root / "20x_256px_0px_overlap" / f"features_{encoder}"
    return _save_h5(out / f"{slide_id}.h5",
                    {"features": features.astype(np.float32), "coords": coords.astype(np.int64)},
                    {"features": {"name": slide_id, "savetodir": str(out)},
                     "coords": attrs or trident_coords_attrs(slide_id)})


def write_stamp(root: Path, slide_id: str, features: np.ndarray, coords_um: np.ndarray, *,
                tile_size_um: float = 256.0, tile_size_px: int = 224, extractor: str = "ctranspath",
                v1: bool = False) -> Path:
    """STAMP: ``feats`` float16 + ``coords`` (float32 µm) and file attributes; ``v1`` writes the older
    layout (coords in px of the 256 µm / 224 px grid, an ``augmented`` flag per row, no ``unit``)."""
    import h5py

    path = root / f"{slide_id}.h5"
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
            f.attrs["stamp_version"] = "2.3.0"
            f.attrs["extractor"] = extractor
            f.attrs["unit"] = "um"
            f.attrs["tile_size_um"] = tile_size_um
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
                          expression: bool = False, genes: int = 80) -> ForeignSet:
    """One slide per patient (TCGA-like names, PAM50 subtypes) in ``layout`` on a 512 px grid.

    ``signal`` > 0 shifts half the patches of Basal/Her2 patients by that much (something to learn);
    ``expression`` also writes ``tables/expression.tsv`` and ``tables/clinical.tsv`` as
    ``make_cohort`` does, so ``prep-expr`` can follow the import.
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
            write_stamp(root, sid, feats, coords * mpp, tile_size_um=size0 * mpp)
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
