"""Options, result and table schemas of the tile stage: what other modules share with it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from brcatool.errors import InputError

EXEC_ONLY = ("workers", "shard", "dask", "merge", "overwrite", "strict")  # do not change outputs


#: Largest patch side: a batch of 64 patches is held in memory per slide being read.
MAX_PATCH_SIZE = 4096

@dataclass
class TileConfig:
    """Options of `brcatool tile` (defaults equal the CLI's)."""

    slides: list[str] = field(default_factory=list)  # slide files and/or folders
    slides_table: str | None = None  # CSV/TSV/Parquet with `path` (+ optional `patient_id`)
    patches: int = 35  # per patient, shared across the patient's slides
    sampling: Literal["random", "spread", "all"] = "random"
    mpp: float = 0.5  # target µm/px of the patches
    magnification: float | None = None  # alternative to mpp: mpp = 10 / magnification
    patch_size: int = 256
    stride: int | None = None  # output px between patches; default = patch_size
    min_tissue: float = 0.5  # tissue fraction a candidate needs under the mask
    tissue_method: Literal["otsu-sat", "otsu-gray"] = "otsu-sat"
    min_area: float = 5000.0  # µm²; smaller tissue components are dropped
    mpp_fallback: float | None = None  # level-0 µm/px for slides without usable metadata
    roi: str | None = None  # folder of QuPath GeoJSON annotations per slide (regions of interest)
    roi_missing: Literal["skip", "whole"] = "whole"  # slides without an ROI file
    roi_class: list[str] = field(default_factory=list)  # keep only ROI annotations of these classes
    seed: int = 0
    no_pixels: bool = False  # patches.parquet + QC only; embed reads the pixels from the slides
    workers: int = 1
    shard: str | None = None  # "K/N": this process tiles a balanced subset of the patients
    dask: str | None = None  # Dask scheduler address or "local:N"
    merge: bool = False  # only write the merged tables from the finished records
    overwrite: bool = False
    strict: bool = False

    @property
    def target_mpp(self) -> float:
        return 10.0 / self.magnification if self.magnification else self.mpp


@dataclass
class TileResult:
    """What a tile run produced."""

    workdir: Path
    slides_table: Path
    patches_table: Path
    rows: list[dict[str, Any]]  # one per slide, as in slides.parquet
    n_patients: int
    n_patches: int
    n_skipped: int
    seconds: float
    pending: int = 0  # slides left to other shards/processes (then no tables were written yet)
    busy: int = 0  # slides this run found locked by another process
    took_over: int = 0  # stale slide locks taken over (their process had died)

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows)


def validate(cfg: TileConfig) -> None:
    checks = [
        (cfg.patches >= 1, "--patches must be >= 1"),
        (8 <= cfg.patch_size <= MAX_PATCH_SIZE, f"--patch-size must be between 8 and {MAX_PATCH_SIZE} px"),
        (cfg.stride is None or cfg.stride >= 1, "--stride must be >= 1"),
        (0.0 <= cfg.min_tissue <= 1.0, "--min-tissue must be between 0 and 1"),
        (cfg.mpp > 0, "--mpp must be > 0"),
        (cfg.magnification is None or cfg.magnification > 0, "--magnification must be > 0"),
        (cfg.mpp_fallback is None or cfg.mpp_fallback > 0, "--mpp-fallback must be > 0"),
        (cfg.min_area >= 0, "--min-area must be >= 0"),
        (cfg.workers >= 1, "--workers must be >= 1"),
        (cfg.sampling in ("random", "spread", "all"), "--sampling must be random, spread or all"),
        (cfg.tissue_method in ("otsu-sat", "otsu-gray"), "--tissue-method must be otsu-sat or otsu-gray"),
        (cfg.roi is None or Path(cfg.roi).is_dir(), "--roi must be a folder of QuPath GeoJSON files"),
        (cfg.roi_missing in ("skip", "whole"), "--roi-missing must be skip or whole"),
        (not cfg.roi_class or cfg.roi is not None, "--roi-class needs --roi (the folder of GeoJSON files)"),
        (bool(cfg.slides) or cfg.slides_table is not None, "give slide files/folders or --slides-table"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)


SLIDE_COLUMNS = {"slide_id": "string", "patient_id": "string", "path": "string", "status": "string",
                 "error": "string", "width": "int64", "height": "int64", "mpp": "float64",
                 "n_candidates": "int64", "n_patches": "int64", "seconds": "float64"}
PATCH_COLUMNS = {"slide_id": "string", "patient_id": "string", "patch_index": "int64", "x": "int64",
                 "y": "int64", "level": "int64", "mpp": "float64", "size": "int64",
                 "tissue_fraction": "float32"}


def arrow_schema(columns: dict[str, str]) -> Any:
    """The pyarrow schema of SLIDE_COLUMNS or PATCH_COLUMNS (what every writer of those tables uses)."""
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in columns.items()])


def params(cfg: TileConfig) -> dict[str, Any]:
    from brcatool.config import to_dict

    # derived values only: --magnification 20 and --mpp 0.5 (or no --stride and --stride equal to
    # --patch-size) make the same outputs, so they must not refuse each other's resume
    params = {k: v for k, v in to_dict(cfg).items() if k not in (*EXEC_ONLY, "mpp", "magnification")}
    params["stride"] = cfg.stride or cfg.patch_size
    params["slides"] = [str(Path(s).expanduser().resolve()) for s in cfg.slides]
    if cfg.slides_table is not None:
        params["slides_table"] = str(Path(cfg.slides_table).expanduser().resolve())
    params["target_mpp"] = cfg.target_mpp
    if not cfg.roi_class:  # added later: an unset --roi-class must not refuse older workdirs' resume
        params.pop("roi_class", None)
    return params
