"""Shared fixtures. All synthetic data comes from the one factory, ``brcatool.synth``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture()
def slide_fixture(tmp_path: Path):
    """Copy one of the real openslide test files (tests/data) into a fresh folder."""

    def copy(name: str) -> Path:
        dst = tmp_path / "fixtures" / name
        dst.parent.mkdir(exist_ok=True)
        shutil.copy(DATA / name, dst)
        return dst

    return copy


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory: pytest.TempPathFactory):
    """A 6-patient synthetic cohort (slides 1536x1152 px at most, 2000 genes), made once."""
    from brcatool.synth import make_cohort

    return make_cohort(tmp_path_factory.mktemp("small_cohort"), patients=6, seed=0,
                       slide_size=(1536, 1152), progress=False)


@pytest.fixture(scope="session")
def mini_demo(tmp_path_factory: pytest.TempPathFactory):
    """The demo pipeline (every stage, report included) at test size: 16 patients, resnet18, 3 folds."""
    from brcatool.pipeline import DemoConfig, run_demo

    cfg = DemoConfig(patients=16, patches=4, encoder="resnet18", epochs=3, patience=2, folds=3, bootstrap=50)
    return run_demo(tmp_path_factory.mktemp("mini_demo") / "work", cfg, progress=False)
