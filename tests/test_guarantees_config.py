"""Class 7 of issue 18: resource bombs and types. YAML alias expansion is bounded, true/false is
never a number, sizes are bounded; each is one line, never a traceback or a MemoryError."""

from __future__ import annotations

import dataclasses
import itertools
import time
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from brcatool.cli.app import app
from brcatool.cli.common import _is_number_option
from brcatool.config import MAX_YAML_VALUES, from_mapping, load_yaml, safe_load_bounded
from brcatool.errors import InputError


def _bomb(width: int, depth: int) -> str:
    lines = [f"l0: &l0 [{', '.join(['x'] * width)}]"]
    for d in range(1, depth):
        lines.append(f"l{d}: &l{d} [{', '.join([f'*l{d - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("width", "depth"), [(w, d) for w, d in itertools.product((2, 3, 5, 9, 30),
                                                                                  (2, 4, 9, 20))
                                              if w ** d > MAX_YAML_VALUES])
def test_alias_bombs_are_refused_fast(tmp_path: Path, width: int, depth: int) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb(width, depth))
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="expands to more than"):
        load_yaml(path)
    assert time.perf_counter() - t0 < 2.0


def test_small_aliases_and_merge_keys_still_load() -> None:
    for width, depth in itertools.product((1, 2, 3), (1, 2, 3, 4)):
        data = safe_load_bounded(_bomb(width, depth))
        assert len(data) == depth and len(data[f"l{depth - 1}"]) == width
    assert safe_load_bounded("base: &b {epochs: 3}\ntrain: {<<: *b, lr: 0.01}") == {
        "base": {"epochs": 3}, "train": {"epochs": 3, "lr": 0.01}}
    with pytest.raises(InputError):  # a node that contains itself
        safe_load_bounded("a: &a [1, *a]")


def _number_options() -> list[tuple[str, str]]:
    out = []
    for name, cmd in typer_commands().items():
        for p in cmd.params:
            if getattr(p, "param_type_name", None) == "option" and _is_number_option(p):
                out.append((name, p.name))
    return out


def typer_commands() -> dict[str, typing.Any]:
    import typer.main

    return typer.main.get_command(app).commands  # type: ignore[attr-defined]


def test_true_false_for_every_number_option_is_one_line(tmp_path: Path) -> None:
    options = _number_options()
    assert len(options) > 20
    for (command, option), value in zip(options, itertools.cycle(("true", "false", "yes", "off"))):
        cfg = tmp_path / f"{command}-{option}.yaml"
        cfg.write_text(f"{command}:\n  {option.replace('_', '-')}: {value}\n")
        res = CliRunner().invoke(app, [command, "--config", str(cfg)])
        assert res.exit_code == 1, (command, option, res.output)
        assert "must be a number" in res.output and "Traceback" not in res.output, (command, option)


def test_true_false_for_every_number_field_of_every_stage_config() -> None:
    from brcatool.ablation import AblateConfig
    from brcatool.embedding import EmbedConfig
    from brcatool.evaluation import EvaluateConfig
    from brcatool.expression import PrepExprConfig
    from brcatool.tiling import TileConfig
    from brcatool.training import TrainConfig

    checked = 0
    for cls in (TileConfig, EmbedConfig, PrepExprConfig, TrainConfig, EvaluateConfig, AblateConfig):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            args = set(typing.get_args(hints[f.name])) | {hints[f.name]}
            if args & {int, float} and bool not in args:
                for value in (True, False):
                    with pytest.raises(InputError):
                        from_mapping(cls, {f.name: value})
                checked += 1
    assert checked > 15


@pytest.mark.parametrize("size", ["100000000x100000000", "16385x300", "300x99999999999999", "0x0",
                                  "-5x300", "axb", "1e9x2", "300"])
def test_synth_sizes_are_bounded(tmp_path: Path, size: str) -> None:
    res = CliRunner().invoke(app, ["synth", str(tmp_path / "c"), "--slide-size", size, "-q"])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and "slide" in res.output.lower()
    assert not (tmp_path / "c" / "slides").exists() or not any((tmp_path / "c" / "slides").iterdir())


@pytest.mark.parametrize(("command", "option", "value"), [
    ("tile", "--patch-size", "100000"), ("tile", "--patch-size", "4097"), ("embed", "--views", "1000000"),
    ("embed", "--batch-size", "100000000"), ("embed", "--input-size", "1000000")])
def test_stage_sizes_are_bounded(tmp_path: Path, small_cohort, command: str, option: str, value: str) -> None:
    from brcatool.synth.patches import make_patch_workdir

    wd = make_patch_workdir(tmp_path / "wd", slides=1, patches=2, size=16)
    args = [command, "-w", str(wd.root), option, value, "-q"]
    if command == "tile":
        args.insert(1, str(small_cohort.slides_dir))
    else:
        args += ["--encoder", "resnet18", "--weights", "random", "--device", "cpu"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and "Traceback" not in res.output and "between" in res.output, res.output
