"""The CLI's shared behaviour: help, version, --config defaults, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from brcatool import __version__
from brcatool.cli.app import app
from brcatool.cli.common import (
    ConfigOpt,
    SeedOpt,
    WorkdirOpt,
    default_workdir,
    fmt_metric,
    report_errors,
)
from brcatool.errors import InputError

runner = CliRunner()
STAGES = ["synth", "tile", "embed", "import-features", "prep-expr", "train", "evaluate", "ablate", "demo"]


def test_help_lists_every_stage():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in STAGES:
        assert name in result.output


@pytest.mark.parametrize("name", STAGES)
def test_each_stage_has_help(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "--help" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def _probe_app() -> typer.Typer:
    """A two-command app wired with the shared options, to test them apart from any stage."""
    probe = typer.Typer()
    seen: dict = {}

    @probe.command("one")
    @report_errors
    def one(workdir: WorkdirOpt = default_workdir(), config: ConfigOpt = None, seed: SeedOpt = 0,
            patches: int = 35, fusions: str = "gene", fail: bool = False) -> None:
        if fail:
            raise InputError("cannot read", path="slides/x.svs", fix="re-export it")
        seen.update(workdir=workdir, seed=seed, patches=patches, fusions=fusions)

    @probe.command("two")
    def two(config: ConfigOpt = None, epochs: int = 10) -> None:
        seen.update(epochs=epochs)

    probe.seen = seen  # type: ignore[attr-defined]
    return probe


def test_config_values_become_defaults_and_flags_win(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("seed: 7\nworkdir: wd\none:\n  patches: 12\ntwo:\n  epochs: 3\n")
    probe = _probe_app()
    assert runner.invoke(probe, ["one", "--config", str(cfg)]).exit_code == 0
    assert probe.seen == {"workdir": Path("wd"), "seed": 7, "patches": 12, "fusions": "gene"}
    assert runner.invoke(probe, ["one", "--config", str(cfg), "--patches", "5", "--seed", "1"]).exit_code == 0
    assert probe.seen["patches"] == 5 and probe.seen["seed"] == 1
    assert runner.invoke(probe, ["two", "--config", str(cfg)]).exit_code == 0
    assert probe.seen["epochs"] == 3


def test_config_list_joins_for_comma_separated_option(tmp_path):
    probe = _probe_app()
    for text in ("fusions: [gene, image]\n", "one:\n  fusions: [gene, image]\n"):
        cfg = tmp_path / "run.yaml"
        cfg.write_text(text)
        result = runner.invoke(probe, ["one", "--config", str(cfg)])
        assert result.exit_code == 0, result.output
        assert probe.seen["fusions"] == "gene,image"
    # A list for a non-string option is not joined: click rejects it as it would any bad value.
    cfg.write_text("patches: [1, 2]\n")
    assert runner.invoke(probe, ["one", "--config", str(cfg)]).exit_code != 0


def test_fmt_metric():
    assert fmt_metric(None) == "n/a" and fmt_metric(float("nan")) == "n/a"
    assert fmt_metric(0.12345) == "0.123" and fmt_metric(0.5, digits=1) == "0.5"
    assert fmt_metric(0.25, 2, sign=True) == "+0.25" and fmt_metric(-0.25, 2, sign=True) == "-0.25"


def test_workdir_from_environment(monkeypatch):
    probe = _probe_app()  # built first: the default is fixed now, the variable is read per call
    monkeypatch.setenv("BRCATOOL_WORKDIR", "/tmp/from-env")
    assert runner.invoke(probe, ["one"]).exit_code == 0
    assert probe.seen["workdir"] == Path("/tmp/from-env")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("patches: [1, 2\n", "not valid YAML at line"),
        ("patchez: 3\n", "unknown option 'patchez'"),
        ("one:\n  epochs: 3\n", "unknown option 'epochs' for `one`"),
    ],
)
def test_bad_config_is_one_red_line(tmp_path, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    result = runner.invoke(_probe_app(), ["one", "--config", str(cfg)])
    assert result.exit_code == 1
    assert message in result.output and str(cfg) in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_library_error_becomes_one_line_with_file_and_fix():
    result = runner.invoke(_probe_app(), ["one", "--fail"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: slides/x.svs: cannot read (fix: re-export it)"


def test_bad_config_on_a_real_stage(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("tile: [oops\n")
    result = runner.invoke(app, ["tile", "--config", str(cfg)])
    assert result.exit_code == 1 and "not valid YAML" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_binary_config_is_one_line(tmp_path):
    cfg = tmp_path / "weights.yaml"
    cfg.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    result = runner.invoke(app, ["train", "--config", str(cfg)])
    assert result.exit_code == 1 and "not a text (UTF-8) file" in result.output
    assert "Traceback" not in result.output


def test_unwritable_workdir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, ["synth", str(blocker / "cohort"), "--patients", "1", "-q"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "fix:" in result.output
    assert len(result.output.strip().splitlines()) == 1


STAGE_CONFIGS = {
    "tile": ("brcatool.tiling", "TileConfig"),
    "embed": ("brcatool.embedding", "EmbedConfig"),
    "prep-expr": ("brcatool.expression", "PrepExprConfig"),
    "train": ("brcatool.training", "TrainConfig"),
    "evaluate": ("brcatool.evaluation", "EvaluateConfig"),
    "ablate": ("brcatool.ablation", "AblateConfig"),
    "import-features": ("brcatool.interop.importer", "ImportConfig"),
    "report": ("brcatool.report", "ReportConfig"),
}


#: CLI options left unset by default on purpose (e.g. to tell "--mpp given" from "--magnification given").
UNSET_ON_PURPOSE = {("tile", "mpp"), ("import-features", "source")}  # source: a required argument


def _default(value):
    value = getattr(value, "value", value)  # Enum choices
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return None if value is None else str(value)


@pytest.mark.parametrize("name", sorted(STAGE_CONFIGS))
def test_cli_defaults_equal_the_library_config_defaults(name):
    """The CLI and the Python API must not drift apart: same option, same default."""
    import dataclasses
    import importlib

    module, cls = STAGE_CONFIGS[name]
    fields = {f.name: f for f in dataclasses.fields(getattr(importlib.import_module(module), cls))}
    command = typer.main.get_command(app).commands[name]
    compared = 0
    for param in command.params:
        field = fields.get(param.name)
        if field is None or param.name in {"seed", "overwrite"} or (name, param.name) in UNSET_ON_PURPOSE:
            continue
        lib = field.default_factory() if field.default is dataclasses.MISSING else field.default
        if isinstance(lib, (list, tuple)) and not lib and param.default in (None, (), []):
            continue
        assert _default(param.default) == _default(lib), f"{name} --{param.name}"
        compared += 1
    assert compared >= 3


@pytest.mark.parametrize("name", sorted(STAGE_CONFIGS))
def test_every_config_field_has_an_option(name):
    """A stage's written config.yaml must feed back through ``--config``: every field is an option."""
    import dataclasses
    import importlib

    module, cls = STAGE_CONFIGS[name]
    fields = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), cls))}
    options = {p.name for p in typer.main.get_command(app).commands[name].params}
    assert not fields - options, f"{name}: config fields without a CLI option: {sorted(fields - options)}"


def test_ablate_passes_every_training_setting_to_each_model():
    import dataclasses

    from brcatool.ablation import AblateConfig
    from brcatool.training import TrainSettings

    changed = {"encoder": "resnet18", "folds": 3, "repeats": 2, "epochs": 7, "lr": 0.01, "weight_decay": 0.0,
               "batch_size": 4, "patience": 2, "hidden": 16, "dropout": 0.1, "heads": 2, "missing": "mask",
               "threshold": "tuned", "device": "cpu", "seed": 5, "overwrite": True, "pos_weight": "none",
               "optimizer": "adam", "bag_size": 35, "split": "site", "site_column": "center",
               "slide_types": "DX", "keep_all_samples": True, "dask": "local:2"}
    assert set(changed) == {f.name for f in dataclasses.fields(TrainSettings)}
    train = AblateConfig(**changed).train_config("concat", "mean", "run-x")
    assert {k: getattr(train, k) for k in changed} == changed
    assert (train.fusion, train.aggregator, train.name) == ("concat", "mean", "run-x")


def test_importing_the_package_and_cli_stays_light():
    """`brcatool --help` must not pay for torch, openslide or zarr: stages import them lazily."""
    import subprocess
    import sys

    code = ("import sys, brcatool, brcatool.cli.app; "
            "heavy = [m for m in ('torch', 'openslide', 'zarr', 'sklearn', 'cv2') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_cli_runs_without_plain_click():
    """A core install has no `click` when typer vendors it (typer >= 0.2x); the CLI must not need it.

    (The dev extras pull click in through dask and huggingface-hub, which hid this from every other test.)
    """
    import subprocess
    import sys

    block = "import sys; sys.modules['click'] = None; "
    if subprocess.run([sys.executable, "-c", block + "import typer"], capture_output=True).returncode:
        pytest.skip("this typer itself needs click")
    code = block + ("from typer.testing import CliRunner; from brcatool.cli.app import app; "
                    "r = CliRunner().invoke(app, ['train', '--epochs', 'x']); "
                    "print(r.exit_code, 'Traceback' in r.output, 'internal error' in r.output)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.split() == ["2", "False", "False"]  # a usage error, reported by typer itself


def test_main_builds_only_the_command_asked_for():
    """`brcatool tile ...` imports and builds the tile command alone; `--help` lists every command."""
    import subprocess
    import sys

    from brcatool.cli.app import COMMANDS, build_app

    code = ("import sys; sys.argv = ['brcatool', 'tile', '--help']\nfrom brcatool.cli.app import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('LOADED', ' '.join(sorted(m for m in sys.modules if m.startswith('brcatool.cli.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "Usage:" in out and "--patches" in out
    loaded = out.split("LOADED", 1)[1].split()
    assert loaded == ["brcatool.cli.app", "brcatool.cli.common", "brcatool.cli.tile"]
    for name in COMMANDS:  # each command builds on its own, and the whole app lists them all
        alone = CliRunner().invoke(build_app(name), [name, "--help"])
        assert alone.exit_code == 0 and "Usage:" in alone.output, name
    listing = CliRunner().invoke(app, ["--help"]).output
    assert all(name in listing for name in COMMANDS)


@pytest.mark.parametrize(("text", "says"), [
    ("epochs: 3\npatches: 7\ntrain:\n  epochs: 2\ntile:\n  seed: 1\n", "no slide files found"),
    ("pachtes: 7\n", "unknown option 'pachtes'"),
    ("train:\n  epochs: 2\n  pachtes: 1\n", "no slide files found"),  # another command's section: skipped
    ("tile:\n  epochs: 2\n", "unknown option 'epochs' for `tile`")])
def test_config_file_under_main_knows_every_command(tmp_path, monkeypatch, capsys, text, says):
    """`main` builds only the command run; a config file may still hold the other commands' options
    and sections (ignored) while a typo is still an error."""
    import sys

    from brcatool.cli.app import main

    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(sys, "argv", ["brcatool", "tile", str(tmp_path / "empty"), "--config", str(cfg),
                                      "--workdir", str(tmp_path / "wd"), "--quiet"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code != 0 and says in " ".join(err.split()), err
