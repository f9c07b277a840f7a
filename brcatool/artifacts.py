"""The workdir contract: file names, manifests, schema stamps and atomic writes.

Every stage reads and writes through this module, so no stage spells a path and no crash
leaves a file that looks finished: everything is written under a temporary name in the same
directory, then renamed into place.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import os
import platform
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brcatool import __version__
from brcatool.errors import ArtifactError
from brcatool.names import check_name, file_name

#: Current version of every stored schema. Bump a number when its layout changes.
SCHEMAS: dict[str, int] = {
    "slides": 1,
    "patches": 1,
    "patch-store": 1,
    "features": 1,
    "feature-store": 1,
    "expression": 1,
    "labels": 1,
    "cohort": 1,
    "oof": 1,
    "attention": 1,
    "summary": 1,
    "epochs": 1,
}

SCHEMA_KEY = "brcatool.schema"
SCHEMA_VERSION_KEY = "brcatool.schema_version"
DEFAULT_WORKDIR = "brcatool-work"


# --------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Workdir:
    """Names of every artifact inside one workdir.

    Ids and names reach paths only through ``brcatool.names`` (slide, patient and encoder ids
    are mapped to safe file names, run and ablation names are checked). ``redirects`` (made by
    ``replacing``) sends chosen outputs to a staging path while everything else is read in place.
    """

    root: Path
    redirects: tuple[tuple[Path, Path], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def at(self, path: Path) -> Path:
        """Where ``path`` (an artifact of this workdir) is read and written: staged outputs of an
        ``--overwrite`` run (see ``outputs.replacing``) live elsewhere until they are swapped in."""
        for final, staged in self.redirects:
            if path == final:
                return staged
            if final in path.parents:
                return staged / path.relative_to(final)
        return path

    # tile
    @property
    def slides_table(self) -> Path:
        return self.at(self.root / "slides.parquet")

    @property
    def patches_table(self) -> Path:
        return self.at(self.root / "patches.parquet")

    @property
    def patches_zarr(self) -> Path:
        return self.at(self.root / "patches.zarr")

    @property
    def qc_dir(self) -> Path:
        return self.at(self.root / "qc")

    def qc_image(self, slide_id: str) -> Path:
        return self.qc_dir / f"{file_name(slide_id)}.png"

    @property
    def tile_parts(self) -> Path:
        """Per-slide records of an unfinished or resumable tile run (``slides/`` holds id files)."""
        return self.at(self.root / ".tile-parts")

    # embed
    def features_dir(self, encoder: str) -> Path:
        return self.at(self.root / "features" / file_name(encoder))

    def features_zarr(self, encoder: str) -> Path:
        return self.features_dir(encoder) / "features.zarr"

    def features_index(self, encoder: str) -> Path:
        return self.features_dir(encoder) / "index.parquet"

    def available_encoders(self) -> list[str]:
        """Names of encoders with an embed manifest (the name recorded there, not the folder's)."""
        base = self.root / "features"
        if not base.is_dir():
            return []
        out = []
        for p in base.iterdir():
            man = p / "manifest.json"
            if p.name.startswith(".") or not man.is_file():
                continue
            try:
                name = read_json(man).get("params", {}).get("encoder") or p.name
            except (ArtifactError, AttributeError):
                name = p.name
            if file_name(str(name)) == p.name:
                out.append(str(name))
        return sorted(out)

    # prep-expr
    @property
    def expression_table(self) -> Path:
        return self.at(self.root / "expression.parquet")

    @property
    def labels_table(self) -> Path:
        return self.at(self.root / "labels.parquet")

    @property
    def cohort_table(self) -> Path:
        return self.at(self.root / "cohort.parquet")

    @property
    def recipe_settings(self) -> Path:
        return self.at(self.root / "recipe.json")

    # train / evaluate / ablate
    @property
    def splits(self) -> Path:
        return self.at(self.root / "splits.json")

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, name: str) -> Path:
        return self.at(self.runs_dir / check_name(name, what="run name"))

    def train_parts(self, name: str) -> Path:
        """Per-fold records of run ``name`` while its folds run as separate units (``--dask``)."""
        return self.at(self.root / ".train-parts" / check_name(name, what="run name"))

    @property
    def ablations_dir(self) -> Path:
        return self.root / "ablations"

    def ablation_dir(self, name: str) -> Path:
        return self.at(self.ablations_dir / check_name(name, what="ablation name"))

    # manifests of stages whose outputs sit at the workdir root
    def stage_manifest(self, stage: str) -> Path:
        return self.at(self.root / "manifests" / f"{stage}.json")

    def require(self, path: Path, *, made_by: str) -> Path:
        """Return ``path`` or fail with a line telling which stage makes it."""
        if not path.exists():
            raise ArtifactError(
                "not found in the workdir",
                path=path,
                fix=f"run `brcatool {made_by} -w {self.root}` first, or pass the right --workdir",
            )
        return path


# --------------------------------------------------------------------------- atomic writes
def tmp_sibling(final: Path) -> Path:
    """A hidden temporary name beside ``final`` (same folder: a rename moves it in)."""
    return final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only on success.

    Works for files and directories (a Zarr array or store). On error the temporary is
    removed and whatever was at ``final`` before stays untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(final)
    try:
        yield tmp
        if tmp.is_dir() and final.exists():
            trash = tmp_sibling(final)
            os.replace(final, trash)
            os.replace(tmp, final)
            remove(trash)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            remove(tmp)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | Path, *, keys: Sequence[str] = (), made_by: str | None = None) -> Any:
    """A JSON artifact; ``keys`` (dotted for nested ones, e.g. ``counts.folds``) must be present.

    A missing file, broken JSON or a missing key is one ArtifactError naming the file and the
    stage to re-run (``made_by``, e.g. ``train --name X --overwrite``).
    """
    path = Path(path)
    fix = f"re-run `brcatool {made_by}`" if made_by else "delete it and re-run the stage that wrote it"
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError("not found", path=path, fix=fix if made_by else None) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" ({exc.msg} at line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ArtifactError(f"is not valid JSON{where}", path=path, fix=fix) from None
    if not isinstance(obj, dict):  # every brcatool JSON artifact is an object
        raise ArtifactError(f"holds a JSON {type(obj).__name__}, not an object", path=path, fix=fix)
    missing = [k for k in keys if not _has_key(obj, k)]
    if missing:
        raise ArtifactError(f"lacks {', '.join(repr(k) for k in missing)} (incomplete or edited)",
                            path=path, fix=fix)
    return obj


def _has_key(obj: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return False
        obj = obj[part]
    return True


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# --------------------------------------------------------------------------- parquet
def write_parquet(df: Any, path: str | Path, *, schema: str, **write_options: Any) -> Path:
    """Write a polars DataFrame or pyarrow Table atomically, stamped with its schema version.

    ``write_options`` go to ``pyarrow.parquet.write_table`` (default: zstd compression), e.g.
    to skip statistics on very wide tables.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = df if isinstance(df, pa.Table) else df.to_arrow()
    meta = dict(table.schema.metadata or {})
    meta[SCHEMA_KEY.encode()] = schema.encode()
    meta[SCHEMA_VERSION_KEY.encode()] = str(SCHEMAS[schema]).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **{"compression": "zstd", **write_options})
    return Path(path)


def read_parquet(path: str | Path, *, schema: str, made_by: str | None = None):
    """Read a stamped table as a polars DataFrame, refusing other schemas or versions."""
    import polars as pl
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        fix = f"run `brcatool {made_by}` first" if made_by else None
        raise ArtifactError("not found", path=path, fix=fix)
    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception as exc:  # noqa: BLE001 - any pyarrow failure means an unreadable file
        raise ArtifactError(f"is not a readable Parquet file ({exc})", path=path,
                            fix="delete it and re-run the stage that wrote it") from None
    check_schema(
        meta.get(SCHEMA_KEY.encode(), b"").decode() or None,
        meta.get(SCHEMA_VERSION_KEY.encode(), b"").decode() or None,
        expected=schema,
        path=path,
    )
    df = pl.read_parquet(path)
    prefix = FINITE_COLUMNS.get(schema)
    if prefix:
        bad = [c for c in df.columns if c.startswith(prefix) and df[c].dtype.is_float()
               and not df[c].is_finite().all()]
        if bad:
            raise ArtifactError(f"holds NaN or infinite values in {', '.join(bad)}", path=path,
                                fix=f"re-run `brcatool {made_by or 'the stage that wrote it'}` "
                                    "(with --overwrite)")
    return df


#: Float columns (by name prefix) that must be finite when a table of the schema is read: a
#: metric is never computed from NaN.
FINITE_COLUMNS = {"oof": "prob", "attention": "weight"}


def check_schema(found: str | None, version: Any, *, expected: str, path: Path) -> None:
    if found != expected:
        raise ArtifactError(f"holds schema {found!r}, expected {expected!r}", path=path,
                            fix="point --workdir at a brcatool workdir or re-run the stage")
    if str(version) != str(SCHEMAS[expected]):
        raise ArtifactError(
            f"schema {expected!r} version {version} is not supported (this brcatool writes "
            f"version {SCHEMAS[expected]})",
            path=path,
            fix="re-run the stage that wrote it with this brcatool version, or use --overwrite",
        )


# --------------------------------------------------------------------------- manifests
def versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape the outputs (for manifests)."""
    return dict(_versions())


@functools.cache
def _versions() -> dict[str, str]:  # once per process: each lookup parses a METADATA file
    from importlib import metadata  # (~10 ms to import: not at every CLI start)

    out = {"brcatool": __version__, "python": platform.python_version()}
    for dist in ("torch", "torchvision", "zarr", "pyarrow", "polars", "numpy", "scikit-learn",
                 "openslide-python", "openslide-bin"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def fingerprint(path: str | Path) -> dict[str, Any]:
    """Identity of an input file (path, size, mtime) for the manifest."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return {"path": str(path), "size": None, "mtime": None}
    return {"path": str(path.resolve()), "size": st.st_size,
            "mtime": _dt.datetime.fromtimestamp(st.st_mtime, _dt.timezone.utc).isoformat()}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def normalise(obj: Any) -> Any:
    """JSON round trip, so parameters compare equal however they were built (tuples, Paths)."""
    return json.loads(json.dumps(obj, default=_json_default, sort_keys=True))


@dataclass
class Manifest:
    """What a stage output was made from; written beside the output when the stage ends."""

    stage: str
    params: dict[str, Any]
    inputs: list[dict[str, Any]] = field(default_factory=list)
    started: str = field(default_factory=_now)

    def add_input(self, path: str | Path) -> None:
        self.inputs.append(fingerprint(path))

    def write(self, path: str | Path, *, counts: Mapping[str, Any] | None = None,
              **extra: Any) -> Path:
        body = {
            "stage": self.stage,
            "params": normalise(self.params),
            "inputs": self.inputs,
            "versions": versions(),
            "started": self.started,
            "finished": _now(),
            "counts": dict(counts or {}),
        }
        body.update(extra)
        return write_json(path, body)


def check_params(manifest_path: str | Path, params: Mapping[str, Any], *, overwrite: bool,
                 what: str) -> bool:
    """Decide whether an existing output may be reused.

    Returns True when an output made with the same parameters exists (resume/skip), False when
    there is none or ``overwrite`` is set. Different parameters without ``overwrite`` refuse.
    """
    manifest_path = Path(manifest_path)
    if not manifest_path.exists() or overwrite:
        return False
    old = read_json(manifest_path).get("params", {})
    new = normalise(dict(params))
    if old == new:
        return True
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:4])
    raise ArtifactError(
        f"{what} exists with other parameters ({shown})",
        path=manifest_path.parent if manifest_path.name == "manifest.json" else manifest_path,
        fix="pass --overwrite to replace it, or another --workdir",
    )

