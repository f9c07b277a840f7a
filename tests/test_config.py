from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from brcatool import config
from brcatool.errors import InputError


@dataclass
class Example:
    patches: int = 35
    mpp: float = 0.5
    sampling: Literal["random", "spread", "all"] = "random"
    fallback: float | None = None
    inputs: list[Path] = field(default_factory=list)


def test_from_mapping_accepts_option_spelling_and_coerces():
    cfg = config.from_mapping(Example, {"patches": 10, "mpp": 1, "sampling": "all", "inputs": ["a", "b"]})
    assert cfg == Example(patches=10, mpp=1.0, sampling="all", inputs=[Path("a"), Path("b")])
    assert config.from_mapping(Example, {"--fallback": 0.25}).fallback == 0.25


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"patchez": 3}, "unknown key 'patchez'"),
        ({"patches": 2.5}, "whole number"),
        ({"sampling": "grid"}, "must be one of"),
        ({"mpp": "fast"}, "must be float"),
    ],
)
def test_from_mapping_rejects_bad_values(values, message, tmp_path):
    with pytest.raises(InputError, match=message):
        config.from_mapping(Example, values, source=tmp_path / "c.yaml")


def test_load_yaml_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("patches: [1, 2\nmpp: 0.5\n")
    with pytest.raises(InputError) as info:
        config.load_yaml(bad)
    assert "not valid YAML at line" in str(info.value) and "\n" not in str(info.value)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(InputError, match="mapping"):
        config.load_yaml(listing)
    with pytest.raises(InputError, match="not found"):
        config.load_yaml(tmp_path / "missing.yaml")


def test_write_yaml_round_trips(tmp_path):
    cfg = Example(patches=7, inputs=[Path("x.svs")])
    path = config.write_yaml(cfg, tmp_path / "config.yaml")
    assert config.from_mapping(Example, config.load_yaml(path)) == cfg
