"""Zarr v3 groups and arrays in a workdir: schema-stamped groups, member arrays written atomically,
the list of complete members.

A group's zarr.json is written here directly, byte for byte as zarr-python writes it
(``zarr_json``; tests/test_zarr_io.py), and ``ensure_group`` checks an existing one by reading it,
so a stage that writes only its own layouts (tile: ``shards.create_patch_array``) never imports
zarr-python, ~0.25 s of CPU at every start. Everything that reads arrays opens them with zarr-python.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from brcatool.artifacts import (
    SCHEMA_KEY,
    SCHEMA_VERSION_KEY,
    SCHEMAS,
    atomic_path,
    check_schema,
    remove,
    tmp_sibling,
)
from brcatool.errors import ArtifactError

_UNREADABLE_FIX = "delete it and re-run the stage that wrote it"


def schema_attrs(schema: str) -> dict[str, Any]:
    return {SCHEMA_KEY: schema, SCHEMA_VERSION_KEY: SCHEMAS[schema]}


def zarr_json(meta: Mapping[str, Any]) -> bytes:
    """A zarr.json's bytes as zarr-python writes them (its default ``json_indent`` of 2)."""
    return json.dumps(meta, allow_nan=True, indent=2).encode()


def _create_group(path: Path, schema: str) -> None:
    """A new group folder at ``path`` (a temporary name: the caller renames it in)."""
    path.mkdir()
    meta = {"attributes": schema_attrs(schema), "zarr_format": 3, "node_type": "group"}
    (path / "zarr.json").write_bytes(zarr_json(meta))


def ensure_group(path: str | Path, *, schema: str) -> Path:
    """Create the group ``path`` stamped with ``schema`` if it is absent, else check that it is a Zarr
    v3 group with that stamp (one ArtifactError line naming it, if not); zarr-python is not imported.

    A new group is built beside and renamed in with a plain rename (never ``atomic_path``'s swap,
    which could replace a group that a concurrent process created and filled meanwhile).
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_sibling(path)
        try:
            _create_group(tmp, schema)
            os.rename(tmp, path)
        except OSError:
            if not path.exists():  # else another process created it first: fine
                raise
        finally:
            remove(tmp)
    try:
        meta = json.loads((path / "zarr.json").read_bytes())
        attrs = meta.get("attributes") or {}
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "group" or not isinstance(attrs, dict):
            raise ValueError(f"zarr.json says zarr_format {meta.get('zarr_format')!r}, "
                             f"node_type {meta.get('node_type')!r}")
    except (OSError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"is not a readable Zarr v3 group ({exc})", path=path,
                            fix=_UNREADABLE_FIX) from None
    check_schema(attrs.get(SCHEMA_KEY), attrs.get(SCHEMA_VERSION_KEY), expected=schema, path=path)
    return path


def open_group(path: str | Path, *, schema: str, create: bool = False):
    """Open (or create) a Zarr v3 group stamped with ``schema``, with zarr-python."""
    import zarr

    path = Path(path)
    if create:
        ensure_group(path, schema=schema)  # made, or its stamp checked
    elif not path.exists():
        raise ArtifactError("Zarr store not found", path=path)
    try:
        group = zarr.open_group(str(path), mode="r+" if create else "r", zarr_format=3)
    except Exception as exc:  # noqa: BLE001
        raise ArtifactError(f"is not a readable Zarr v3 group ({exc})", path=path,
                            fix=_UNREADABLE_FIX) from None
    if not create:
        attrs = dict(group.attrs)
        check_schema(attrs.get(SCHEMA_KEY), attrs.get(SCHEMA_VERSION_KEY), expected=schema, path=path)
    return group


def write_array(group_path: str | Path, name: str, data: Any, *, chunks: Sequence[int],
                shards: Sequence[int] | None = None, attrs: Mapping[str, Any] | None = None,
                compressors: Any = "auto") -> Path:
    """Write one array as a member of a group, atomically (built beside, then renamed in).

    Readers list the group's members, so an array under its final name is always complete.
    """
    import zarr

    final = Path(group_path) / name
    with atomic_path(final) as tmp:
        arr = zarr.create_array(
            store=str(tmp), shape=data.shape, dtype=data.dtype, chunks=tuple(chunks),
            shards=tuple(shards) if shards is not None else None, compressors=compressors,
            attributes=dict(attrs or {}), zarr_format=3, overwrite=True,
        )
        if data.size:
            arr[...] = data
    return final


def array_names(group_path: str | Path) -> list[str]:
    """Members of a group that are complete arrays (temporaries start with a dot)."""
    group_path = Path(group_path)
    if not group_path.is_dir():
        return []
    return sorted(
        p.name for p in group_path.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / "zarr.json").is_file()
    )
