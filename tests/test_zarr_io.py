"""Zarr groups written and checked without zarr-python: the same bytes, and one line for a bad one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brcatool import zarr_io
from brcatool.errors import ArtifactError


@pytest.mark.parametrize("schema", ["patch-store", "feature-store"])
def test_new_group_is_what_zarr_python_writes(tmp_path: Path, schema: str) -> None:
    import zarr

    ours = zarr_io.ensure_group(tmp_path / "ours.zarr", schema=schema)
    zarr.open_group(str(tmp_path / "ref.zarr"), mode="w", zarr_format=3,
                    attributes=zarr_io.schema_attrs(schema))
    assert (ours / "zarr.json").read_bytes() == (tmp_path / "ref.zarr" / "zarr.json").read_bytes()
    group = zarr_io.open_group(ours, schema=schema)  # zarr-python reads it back, stamp checked
    assert dict(group.attrs) == zarr_io.schema_attrs(schema)
    assert zarr_io.ensure_group(ours, schema=schema) == ours  # an existing group: checked, kept
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_existing_members_survive_ensure_group(tmp_path: Path) -> None:
    store = tmp_path / "f.zarr"
    zarr_io.open_group(store, schema="feature-store", create=True)
    zarr_io.write_array(store, "s1", np.ones((2, 3), np.float32), chunks=(2, 3))
    zarr_io.ensure_group(store, schema="feature-store")
    assert zarr_io.array_names(store) == ["s1"]


@pytest.mark.parametrize(("content", "says"), [
    (b"{not json", "is not a readable Zarr v3 group"),
    (b'{"zarr_format": 2, "node_type": "group"}', "zarr_format 2"),
    (b'{"zarr_format": 3, "node_type": "array", "attributes": {}}', "node_type 'array'"),
    (b'{"zarr_format": 3, "node_type": "group", "attributes": {"brcatool.schema": "feature-store", '
     b'"brcatool.schema_version": 1}}', "holds schema 'feature-store', expected 'patch-store'"),
    (b'{"zarr_format": 3, "node_type": "group", "attributes": {"brcatool.schema": "patch-store", '
     b'"brcatool.schema_version": 99}}', "version 99 is not supported"),
    (None, "is not a readable Zarr v3 group")])  # a folder without zarr.json
def test_a_bad_group_is_one_line_naming_it(tmp_path: Path, content: bytes | None, says: str) -> None:
    store = tmp_path / "patches.zarr"
    store.mkdir()
    if content is not None:
        (store / "zarr.json").write_bytes(content)
    with pytest.raises(ArtifactError) as err:
        zarr_io.ensure_group(store, schema="patch-store")
    line = err.value.one_line()
    assert says in line and str(store) in line and "\n" not in line
