"""The import-features stage: another tool's per-slide feature files -> a normal brcatool workdir.

Writes ``features/<encoder>/`` (store, ``index.parquet``, ``manifest.json``, ``config.yaml``) exactly
as ``embed`` would, plus the ``patches.parquet``/``slides.parquet`` rows the coordinates imply (no
pixels: ``patches.zarr`` is not made), so ``prep-expr``, ``train``, ``evaluate`` and ``ablate`` run
unchanged. A file that cannot be used (unreadable, features/coords length mismatch, another feature
dimension than the other slides, NaN, no µm/px) becomes a ``failed`` row with a one-line error; the
other slides go on.

A slide's level-0 µm/px comes from, in order: the slides table's ``mpp``, ``--mpp``, the slide file the
table's ``path`` names (openslide), the feature file (TRIDENT: 10 / ``level0_magnification``, a bucket
and so a guess). ``slides.parquet`` (column ``mpp_source``) and the manifest record which; the guess
is warned about once, with the count. The extractor a file records (TRIDENT ``encoder`` on
``features``, STAMP ``extractor``) is the manifest's ``extractor`` and part of its ``weights``.
"""

from __future__ import annotations

import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brcatool import artifacts, outputs, slides, stores, tiling
from brcatool.artifacts import Manifest, Workdir
from brcatool.errors import ArtifactError, BrcaError, InputError
from brcatool.interop import h5features
from brcatool.interop.h5features import ReadOptions, SlideFeatures

STAGE = "import-features"
#: slides.parquet columns of an import: tile's, plus where each slide's µm/px came from
SLIDE_COLUMNS = {**tiling.SLIDE_COLUMNS, "mpp_source": "string"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class ImportConfig:
    """Options of ``brcatool import-features`` (defaults = the CLI's)."""

    source: str = ""  # folder of per-slide feature files
    format: str = "trident"  # clam | trident | stamp | pt
    encoder: str = ""  # name of the feature store: features/<encoder>/
    mpp: float | None = None  # level-0 µm/px for every slide (wins over file attributes)
    slides_table: str | None = None  # CSV/TSV/Parquet: slide_id (or path), patient_id, optional mpp
    coords: str | None = None  # folder of coordinate .h5 files (CLAM patches/, .pt layouts)
    patch_size: int | None = None  # level-0 px per patch side when no attribute gives it
    overwrite: bool = False

    def validate(self) -> None:
        h5features.get_layout(self.format)
        if not _NAME.match(self.encoder or ""):
            raise InputError(f"--encoder {self.encoder!r} is not a usable folder name",
                             fix="use letters, digits, '.', '_' or '-' (e.g. uni_v1)")
        if self.mpp is not None and not 0 < self.mpp < 100:
            raise InputError(f"--mpp must be a level-0 µm/px in (0, 100), got {self.mpp}")
        if self.patch_size is not None and self.patch_size < 1:
            raise InputError("--patch-size must be >= 1")


@dataclass
class ImportResult:
    workdir: Path
    encoder: str
    features_dir: Path
    rows: list[dict[str, Any]]  # one per file, as in slides.parquet
    dim: int
    n_patches: int
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows)


# --------------------------------------------------------------------------- inputs
def read_slides_table(path: str | Path) -> dict[str, dict[str, Any]]:
    """slide_id -> {patient_id, path, mpp} from a table with ``slide_id`` or ``path`` (+ optional
    ``patient_id``, ``mpp``); a ``path`` column also names the slide file (heatmap thumbnails)."""
    import polars as pl

    from brcatool.tables import read_table

    path = Path(path)
    df = read_table(path, numeric=False)
    if "slide_id" not in df.columns and "path" not in df.columns:
        raise InputError(f"needs a 'slide_id' or 'path' column (found {', '.join(df.columns)})", path=path)
    out: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(df.cast(pl.Utf8).iter_rows(named=True)):
        file = row.get("path")
        sid = row.get("slide_id") or (slides.slide_id_for(Path(file)) if file else None)
        if not sid:
            raise InputError(f"row {i + 1} has neither slide_id nor path", path=path)
        mpp = row.get("mpp")
        try:
            mpp_value = float(mpp) if mpp not in (None, "") else None
        except ValueError:
            raise InputError(f"row {i + 1}: mpp {mpp!r} is not a number", path=path) from None
        if file and not Path(file).is_absolute():
            file = str((path.parent / file).resolve())
        out[sid] = {"patient_id": row.get("patient_id") or None, "path": file, "mpp": mpp_value}
    return out


def _request(cfg: ImportConfig) -> dict[str, Any]:
    """The import's own parameters (what a re-run must repeat to reuse the output)."""
    def resolved(p: str | None) -> str | None:
        return str(Path(p).expanduser().resolve()) if p else None

    return {"format": cfg.format, "source": resolved(cfg.source), "coords": resolved(cfg.coords),
            "mpp": cfg.mpp, "patch_size": cfg.patch_size, "slides_table": resolved(cfg.slides_table)}


def _guard_workdir(wd: Workdir, cfg: ImportConfig, request: dict[str, Any]) -> None:
    """Refuse to mix with a tiled workdir or to replace features made otherwise, unless --overwrite."""
    tile_manifest = wd.stage_manifest("tile")
    man = wd.features_dir(cfg.encoder) / "manifest.json"
    if cfg.overwrite:
        return
    if tile_manifest.exists():
        raise ArtifactError("holds patches tiled from slides; imported features bring their own patch table",
                            path=wd.root, fix="import into a fresh --workdir, or pass --overwrite to replace "
                            "the tile outputs")
    if man.exists():
        old = artifacts.read_json(man)
        if old.get("stage") != STAGE or old.get("params", {}).get("import") != artifacts.normalise(request):
            raise ArtifactError(f"features of encoder {cfg.encoder!r} exist, made otherwise", path=man.parent,
                                fix="pass --overwrite to replace them, or another --encoder name")


def _failed(sid: str, path: Path, patient: str, message: str) -> dict[str, Any]:
    return {"slide_id": sid, "patient_id": patient, "path": str(path), "status": "failed",
            "error": " ".join(message.split())[:300], "width": None, "height": None, "mpp": None,
            "n_candidates": 0, "n_patches": 0, "seconds": 0.0}


# --------------------------------------------------------------------------- the stage
def run_import_features(workdir: Path | Workdir, cfg: ImportConfig, *, progress: bool = True) -> ImportResult:
    """Import every feature file under ``cfg.source``; see the module doc."""
    import polars as pl
    import pyarrow as pa

    from brcatool.config import write_yaml

    t0 = time.perf_counter()
    wd = workdir if isinstance(workdir, Workdir) else Workdir(Path(workdir))
    cfg.validate()
    layout = h5features.get_layout(cfg.format)
    files = layout.find(Path(cfg.source))
    if not files:
        raise InputError(f"holds no {layout.suffix} feature files", path=cfg.source,
                         fix=f"point DIR at the folder of per-slide files ({layout.description})")
    table = read_slides_table(cfg.slides_table) if cfg.slides_table else {}
    request = _request(cfg)
    _guard_workdir(wd, cfg, request)
    fdir = wd.features_dir(cfg.encoder)
    # everything is built beside the old outputs and swapped in at the end: a failed or refused
    # import leaves the previous one untouched; features stream to the store slide by slide
    finals = [fdir, wd.patches_table, wd.slides_table, wd.stage_manifest(STAGE)]
    with outputs.replacing(wd, finals, tag="import") as swd:
        rows, kept = _import_files(swd, layout, files, table, cfg, progress)
        dim = _keep_majority_dim(kept)
        kept = [(sf, row) for sf, row in kept if row["status"] == "ok"]
        extractors = sorted({sf.extractor for sf, _ in kept if sf.extractor})
        params = {"encoder": cfg.encoder, "weights": f"imported:{cfg.format}" + (
                      f":{','.join(extractors)}" if extractors else ""),
                  "extractor": ",".join(extractors) or None,
                  "dim": int(dim), "views": 1, "input_size": None, "normalisation": None, "stain_norm": None,
                  "precision": "imported", "dtype": "float16", "import": request}
        patch_rows = _patch_table(kept)
        _check_patch_table(wd, patch_rows, cfg)  # the old table, at its real place
        index = pl.DataFrame(
            {"slide_id": [sf.slide_id for sf, _ in kept], "patient_id": [r["patient_id"] for _, r in kept],
             "n_patches": [r["n_patches"] for _, r in kept], "views": [1] * len(kept),
             "dim": [dim] * len(kept)},
            schema={"slide_id": pl.Utf8, "patient_id": pl.Utf8, "n_patches": pl.Int64, "views": pl.Int64,
                    "dim": pl.Int64})
        artifacts.write_parquet(index, swd.features_index(cfg.encoder), schema="features")
        artifacts.write_parquet(patch_rows, swd.patches_table, schema="patches")
        slide_table = pa.Table.from_pylist([{k: r.get(k) for k in SLIDE_COLUMNS} for r in rows],
                                           schema=tiling.arrow_schema(SLIDE_COLUMNS))
        artifacts.write_parquet(slide_table, swd.slides_table, schema="slides")
        write_yaml(cfg, swd.features_dir(cfg.encoder) / "config.yaml")
        n_patches = int(patch_rows.num_rows)
        sources = Counter(r["mpp_source"] for _, r in kept)
        counts = {"files": len(files), "slides": len(kept), "failed": len(rows) - len(kept),
                  "patches": n_patches, "mpp_source": dict(sorted(sources.items()))}
        manifest = Manifest(STAGE, params)
        for _, path in files:
            manifest.add_input(path)
        # the fingerprint changes exactly when the store does (train records it and refuses a stale run)
        manifest.write(swd.features_dir(cfg.encoder) / "manifest.json", status="complete", counts=counts,
                       fingerprint=outputs.output_fingerprint(params,
                                                              files=[swd.features_index(cfg.encoder)]))
        Manifest(STAGE, {"encoder": cfg.encoder, **request}).write(
            swd.stage_manifest(STAGE), counts=counts,
            fingerprint=outputs.output_fingerprint(files=[swd.patches_table, swd.slides_table]))
    if cfg.overwrite and wd.stage_manifest("tile").exists():  # tile's patches no longer match the tables
        for p in (wd.patches_zarr, wd.tile_parts):
            shutil.rmtree(p, ignore_errors=True)
        wd.stage_manifest("tile").unlink()
    warnings = []
    if sources.get("magnification"):
        warnings.append(f"{sources['magnification']} slide(s): µm/px guessed as 10 / level0_magnification "
                        "(TRIDENT's magnification bucket, not the scanner's value); pass --mpp or an "
                        "mpp/path column in --slides-table (mpp_source in slides.parquet)")
    return ImportResult(wd.root, cfg.encoder, fdir, rows, int(dim), n_patches, time.perf_counter() - t0,
                        params, warnings)


def _import_files(wd: Workdir, layout: h5features.Layout, files: list[tuple[str, Path]],
                  table: dict[str, dict[str, Any]], cfg: ImportConfig, progress: bool,
                  ) -> tuple[list[dict[str, Any]], list[tuple[SlideFeatures, dict[str, Any]]]]:
    """Read, check and store each file (features leave memory once stored); (rows, stored slides)."""
    rows: list[dict[str, Any]] = []
    kept: list[tuple[SlideFeatures, dict[str, Any]]] = []
    seen: set[str] = set()
    coords_dir = Path(cfg.coords).expanduser() if cfg.coords else None
    for sid, path in _progress(files, progress):
        t1 = time.perf_counter()
        info = table.get(sid, {})
        patient = info.get("patient_id") or slides.patient_id_for(sid)
        if sid in seen:
            rows.append(_failed(sid, path, patient, "duplicate slide id (another file has the same name)"))
            continue
        seen.add(sid)
        try:
            mpp, source, size = _given_mpp(info, cfg)
            opts = ReadOptions(mpp=mpp, patch_size=cfg.patch_size, coords_dir=coords_dir)
            sf = h5features.read_slide(layout, sid, path, opts)
            if sf.geometry.mpp0 is None:
                raise InputError("records no µm/px", path=path,
                                 fix="pass --mpp (level-0 µm/px) or an mpp column in --slides-table")
        except BrcaError as exc:
            rows.append(_failed(sid, path, patient, exc.one_line()))
            continue
        source = source or sf.geometry.mpp_source or "file"
        if size is not None and sf.geometry.width0 is None:
            sf.geometry.width0, sf.geometry.height0 = size
        array = stores.write_features(wd, cfg.encoder, sid, sf.features[None],
                                      attrs={"source": str(path), "format": cfg.format})
        g, (n, d) = sf.geometry, sf.features.shape
        sf.features = sf.features[:0]  # stored: keep only the shape
        row = {"slide_id": sid, "patient_id": patient, "path": info.get("path"), "status": "ok",
               "error": None,
               "width": g.width0, "height": g.height0, "mpp": g.mpp0, "n_candidates": n, "n_patches": n,
               "mpp_source": source, "dim": d, "array": array, "seconds": time.perf_counter() - t1}
        rows.append(row)
        kept.append((sf, row))
    if not kept:
        raise InputError(f"no usable feature file among {len(files)}: " + rows[0]["error"], path=cfg.source)
    return rows, kept


def _given_mpp(info: dict[str, Any], cfg: ImportConfig,
               ) -> tuple[float | None, str | None, tuple[int, int] | None]:
    """(level-0 µm/px, its source, the slide's level-0 size) from the slides table's mpp, --mpp or the
    slide file the table names; (None, None, None): the feature file's own (maybe guessed) value."""
    if info.get("mpp"):
        return float(info["mpp"]), "slides_table", None
    if cfg.mpp:
        return float(cfg.mpp), "mpp_option", None
    if info.get("path") and Path(info["path"]).exists():  # absent here: the file's own value
        slide = slides.open_slide(info["path"])
        try:
            return slides.slide_mpp(slide, path=info["path"]), "slide", tuple(slide.dimensions)
        finally:
            slide.close()
    return None, None, None


def _keep_majority_dim(kept: list[tuple[SlideFeatures, dict[str, Any]]]) -> int:
    """The feature dimension most slides have; slides with another one become failed rows."""
    dim = Counter(row["dim"] for _, row in kept).most_common(1)[0][0]
    for sf, row in kept:
        if row["dim"] != dim:
            shutil.rmtree(row["array"], ignore_errors=True)
            row.update(_failed(sf.slide_id, sf.path, row["patient_id"],
                               f"{sf.path}: feature dim {row['dim']} differs from the other slides' {dim}"))
    return int(dim)


def _patch_table(good: list[tuple[SlideFeatures, dict[str, Any]]]) -> Any:
    """patches.parquet rows: level-0 top-left x/y, the level read, the patch µm/px and side as encoded;
    ``tissue_fraction`` is NaN (the foreign tool's mask is not known)."""
    import pyarrow as pa

    parts = []
    for sf, row in good:
        n, g = row["n_patches"], sf.geometry
        patch_mpp = float(g.mpp0) * g.size0 / g.out_size
        parts.append(pa.table({
            "slide_id": [sf.slide_id] * n, "patient_id": [row["patient_id"]] * n, "patch_index": np.arange(n),
            "x": sf.coords[:, 0], "y": sf.coords[:, 1], "level": np.full(n, g.level),
            "mpp": np.full(n, patch_mpp), "size": np.full(n, g.out_size),
            "tissue_fraction": np.full(n, np.nan, np.float32)},
            schema=tiling.arrow_schema(tiling.PATCH_COLUMNS)))
    return pa.concat_tables(parts) if parts else tiling.arrow_schema(tiling.PATCH_COLUMNS).empty_table()


def _check_patch_table(wd: Workdir, new: Any, cfg: ImportConfig) -> None:
    """A second encoder imported into the same workdir must share the first one's patches."""
    if cfg.overwrite or not wd.patches_table.exists():
        return
    keys = ["slide_id", "patch_index", "x", "y", "size"]
    old = artifacts.read_parquet(wd.patches_table, schema="patches").select(keys).sort(keys[:2])
    import polars as pl

    mine = pl.from_arrow(new).select(keys).sort(keys[:2])
    if not old.equals(mine):
        raise ArtifactError("holds other patches than these files imply (another import or tile run)",
                            path=wd.patches_table, fix="import into a fresh --workdir, or pass --overwrite")


def _progress(files: list[tuple[str, Path]], enabled: bool):
    if not enabled:
        yield from files
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("import-features", total=len(files))
        for item in files:
            yield item
            bar.advance(task)
