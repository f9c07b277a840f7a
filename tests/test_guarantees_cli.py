"""Issue 18, done-when: zero tracebacks across the error paths. Every case below is a user
mistake or a damaged artifact; each must end with exit code 1 or 2 and a short error, never a
Python traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from brcatool import artifacts, stores
from brcatool.cli.app import app
from brcatool.synth.hostile import hostile_names


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    from brcatool.synth import make_prepared_workdir
    from brcatool.training import TrainConfig, run_train

    prepared = make_prepared_workdir(tmp_path_factory.mktemp("cli") / "wd", patients=12, patches=2,
                                     dim=4, genes=8)
    run_train(prepared.workdir, TrainConfig(fusion="gene", folds=2, epochs=1, patience=1, name="r",
                                            device="cpu"), progress=False)
    return prepared


def _cases(root: Path, tmp: Path) -> list[list[str]]:
    wd = str(root)
    bomb = tmp / "bomb.yaml"
    bomb.write_text("a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)))
    typed = tmp / "typed.yaml"
    typed.write_text("epochs: true\n")
    broken = tmp / "broken.yaml"
    broken.write_text("patches: [1, 2\n")
    empty = tmp / "empty"
    empty.mkdir(exist_ok=True)
    afile = tmp / "a-file"
    afile.write_text("x")
    cases = [
        ["train", "-w", wd, "--name", "../../precious", "--overwrite"],
        ["train", "-w", wd, "--name", ".", "--overwrite"],
        ["ablate", "-w", wd, "--name", "..", "--overwrite"],
        ["evaluate", "-w", wd, "--run", "../../etc"],
        ["evaluate", "-w", wd, "--run", "nope"],
        ["evaluate", "-w", wd, "--run", "r", "--on", wd],
        ["evaluate", "-w", str(empty)],
        ["train", "-w", str(empty)],
        ["train", "-w", wd, "--folds", "1"],
        ["train", "-w", wd, "--folds", "9", "--name", "x"],
        ["train", "-w", wd, "--config", str(bomb)],
        ["train", "-w", wd, "--config", str(typed)],
        ["tile", str(tmp / "no-slides"), "-w", wd],
        ["tile", str(empty), "-w", wd, "--config", str(broken)],
        ["tile", str(afile), "-w", str(afile)],
        ["embed", "-w", str(empty)],
        ["embed", "-w", wd, "--encoder", "no-such-encoder"],
        ["prep-expr", "-w", wd, "--expression", str(tmp / "missing.tsv")],
        ["synth", str(tmp / "c"), "--slide-size", "100000000x100000000"],
        ["synth", str(tmp / "c"), "--config", str(bomb)],
    ]
    cases += [["train", "-w", wd, "--name", n, "--overwrite"] for n in hostile_names(20, seed=3)
              if "\x00" not in n and n and not n.startswith("-")][:25]
    return cases


def _check(res) -> None:
    assert "Traceback" not in res.output and "internal error" not in res.output, res.output
    assert res.exit_code in (1, 2), (res.exit_code, res.output)
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.exception


def test_error_paths_never_print_a_traceback(trained, tmp_path: Path) -> None:
    for args in _cases(trained.workdir.root, tmp_path):
        _check(CliRunner().invoke(app, [*args, "-q"] if args[0] != "synth" else args))


def test_damaged_artifacts_are_one_line_errors_naming_the_file(trained, tmp_path: Path) -> None:
    """Each damaged file, with the command that reads it: exit 1, the file named, no traceback;
    the commands that do not read it still work."""
    import shutil

    wd = trained.workdir
    copy = tmp_path / "copy"
    from brcatool.artifacts import Workdir

    cw = Workdir(copy)
    concat = ["train", "--fusion", "concat", "--aggregator", "mean", "--folds", "2", "--epochs", "1",
              "--name", "c"]
    gene = ["train", "--name", "g", "--fusion", "gene", "--folds", "2", "--epochs", "1", "--patience", "1"]
    evaluate = ["evaluate", "--run", "r", "--bootstrap", "10"]

    def feature_chunk() -> Path:
        return next(p for p in cw.features_zarr(trained.encoder).rglob("c/*/*/*") if p.is_file())

    # (what to damage, how, the command that reads it); the error must name the damaged file (the
    # array's folder for a Zarr chunk)
    damage = [
        (lambda: cw.labels_table, lambda p: p.write_bytes(b"PAR1 cut"), gene),
        (lambda: cw.expression_table, lambda p: p.write_bytes(b""), gene),
        (lambda: cw.stage_manifest("prep-expr"), lambda p: p.write_text("{"), gene),
        (lambda: cw.run_dir("r") / "metrics.json", lambda p: p.write_text(json.dumps({"task": "x"})),
         evaluate),
        (lambda: cw.run_dir("r") / "manifest.json", lambda p: p.write_text("[]"), evaluate),
        (lambda: cw.recipe_settings, lambda p: p.write_text("not json"), gene),
        (feature_chunk, lambda p: p.write_bytes(b"x"), concat),
        # a manifest without a status reads as an unfinished embed: the error names its folder
        (lambda: cw.features_dir(trained.encoder) / "manifest.json", lambda p: p.write_text("{}"), concat,
         lambda p: p.parent),
        (lambda: cw.splits, lambda p: p.write_text(json.dumps({"folds": "many"})), gene),
    ]
    for i, (where, hurt, cmd, *names) in enumerate(damage):
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(wd.root, copy)
        path = where()
        chunk = "c" in path.relative_to(copy).parts
        named = str(names[0](path) if names else path.parents[3] if chunk else path)  # chunk: its array
        assert path.is_file(), (i, path)
        hurt(path)
        res = CliRunner().invoke(app, [*cmd, "-w", str(copy), "-q"])
        assert "Traceback" not in res.output and "internal error" not in res.output, (i, cmd, res.output)
        assert res.exit_code == 1, (i, cmd, res.exit_code, res.output)
        assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), \
            (i, cmd, res.exception)
        assert named in " ".join(res.output.split()), (i, named, res.output)
    shutil.rmtree(copy)
    shutil.copytree(wd.root, copy)
    for cmd in (concat, gene, evaluate):  # undamaged: every command above succeeds
        res = CliRunner().invoke(app, [*cmd, "-w", str(copy), "-q"])
        assert res.exit_code == 0, (cmd, res.output)
    assert stores.feature_slides(wd, trained.encoder)  # the original untouched
    assert artifacts.read_json(wd.run_dir("r") / "manifest.json")["stage"] == "train"
