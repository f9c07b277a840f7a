"""embed's feature sink: slides assembled from batches that straddle them, written in a thread or
a child process (CUDA), with the same files and the same one-line refusal of non-finite values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from brcatool import stores
from brcatool.artifacts import Workdir
from brcatool.embed_unit import _SlideSink
from brcatool.errors import ArtifactError

SEGMENTS = [("slide-a", 5), ("slide-b", 2), ("slide-c", 6)]


def _feed(sink: _SlideSink, feats: np.ndarray, batch: int) -> None:
    for i in range(0, feats.shape[1], batch):
        sink.add(torch.from_numpy(feats[:, i:i + batch]))


@pytest.mark.parametrize("process", [False, True])
def test_slides_are_written_whole_by_thread_or_process(tmp_path: Path, process: bool) -> None:
    wd = Workdir(tmp_path / "wd")
    feats = np.random.default_rng(0).standard_normal((2, 13, 8)).astype(np.float16)
    with _SlideSink(wd, "enc", SEGMENTS, 2, 8, {"params_hash": "h"}, process=process) as sink:
        _feed(sink, feats, batch=4)  # batches of 4 straddle all three slides
    start = 0
    for sid, n in SEGMENTS:
        got = stores.read_features(wd, "enc", sid)
        assert np.array_equal(got, feats[:, start:start + n]), sid
        assert stores.member(stores.feature_group(wd, "enc"), sid).attrs["params_hash"] == "h"
        start += n


@pytest.mark.parametrize("process", [False, True])
def test_non_finite_features_are_one_line_and_not_written(tmp_path: Path, process: bool) -> None:
    wd = Workdir(tmp_path / "wd")
    feats = np.ones((1, 13, 4), np.float16)
    feats[0, 6, 2] = np.nan  # in slide-b
    with pytest.raises(ArtifactError) as err:
        with _SlideSink(wd, "enc", SEGMENTS, 1, 4, {}, process=process) as sink:
            _feed(sink, feats, batch=3)
    line = err.value.one_line()
    assert "non-finite features for slide slide-b" in line and "--precision fp32" in line
    assert "\n" not in line and "Traceback" not in line
    assert "slide-b" not in stores.feature_slides(wd, "enc")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state  # a zombie has ended


_PARENT = """
import signal, sys, time
from brcatool.embed_unit import _writer_process
ex = _writer_process()
ex.submit(int).result()
print(list(ex._processes)[0], flush=True)
try:
    time.sleep(60)
except KeyboardInterrupt:
    sys.exit(0)
"""


@pytest.mark.parametrize("how", ["ctrl-c", "kill -9"])
def test_the_writer_process_is_quiet_on_ctrl_c_and_ends_with_its_parent(how: str) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    child = int(proc.stdout.readline())
    assert _alive(child)
    if how == "ctrl-c":  # the terminal sends SIGINT to the whole foreground group
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    else:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 15
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(child), f"writer process {child} outlived its parent ({how})"
