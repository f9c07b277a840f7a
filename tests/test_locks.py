"""Lock files: exclusive creation, release, takeover of dead or silent holders, two real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from brcatool import locks


def test_exclusive_and_released(tmp_path: Path) -> None:
    path = tmp_path / "a" / "unit.lock"
    first = locks.acquire(path)
    assert first is not None and first.took_over is None
    info = locks.read_info(path)
    assert info.pid == os.getpid() and info.host == socket.gethostname()
    assert locks.acquire(path) is None  # held by a live process (this one)
    assert locks.holder(path) == info
    with pytest.raises(locks.LockBusy, match=f"pid {os.getpid()}"):
        with locks.locked(path, wait=0.3, poll=0.05):
            pass
    first.release()
    assert not path.exists()
    with pytest.raises(RuntimeError):
        with locks.locked(path):
            assert path.exists()
            raise RuntimeError("boom")
    assert not path.exists()  # released on the way out of an exception too


def test_release_leaves_a_taken_over_lock_alone(tmp_path: Path) -> None:
    path = tmp_path / "unit.lock"
    mine = locks.acquire(path, heartbeat=0)
    other = replace(mine.info, token="someone-else")
    path.write_text(json.dumps(asdict(other)))
    mine.release()
    assert locks.read_info(path).token == "someone-else"


def _write(path: Path, info: locks.LockInfo, age: float = 0.0) -> None:
    path.write_text(json.dumps(asdict(info)))
    t = time.time() - age
    os.utime(path, (t, t))


def test_dead_pid_reused_pid_and_timeout_are_taken_over(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    me = locks._me()
    cases = {
        "dead": replace(me, pid=proc.pid, proc_start=None),
        "reused": replace(me, proc_start=(me.proc_start or 0) + 1),  # our pid, an older process
        "silent": replace(me, host="elsewhere"),
    }
    for name, info in cases.items():
        path = tmp_path / f"{name}.lock"
        _write(path, info, age=locks.STALE_AFTER + 5 if name == "silent" else 0)
        lock = locks.acquire(path)
        assert lock is not None, name
        assert lock.took_over == info  # reported
        lock.release()
    fresh = tmp_path / "fresh.lock"
    _write(fresh, replace(me, host="elsewhere"), age=5)  # another host, recently refreshed: live
    assert locks.acquire(fresh) is None
    assert locks.acquire(fresh, stale_after=2) is not None


def test_heartbeat_keeps_the_lock_fresh(tmp_path: Path) -> None:
    path = tmp_path / "unit.lock"
    with locks.locked(path, heartbeat=0.05, stale_after=1.0):
        t = time.time() - 10
        os.utime(path, (t, t))
        time.sleep(0.3)
        assert time.time() - path.stat().st_mtime < 1.0


def test_killed_holder_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "unit.lock"
    code = textwrap.dedent(f"""
        import time
        from brcatool import locks
        lock = locks.acquire({str(path)!r})
        print("held", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    assert locks.acquire(path) is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lock = locks.acquire(path)
    assert lock is not None and lock.took_over.pid == proc.pid
    lock.release()


def test_two_processes_never_work_on_one_unit(tmp_path: Path) -> None:
    """The unit protocol of tile/embed: lock, skip if recorded, work, record, release."""
    log = tmp_path / "log.txt"
    code = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from brcatool import locks
        root = Path({str(tmp_path)!r})
        order = range(12) if sys.argv[1] == "up" else reversed(range(12))
        for i in order:
            lock = locks.acquire(root / f"{{i}}.lock")
            if lock is None:
                continue
            with lock:
                if (root / f"{{i}}.done").exists():
                    continue
                with open({str(log)!r}, "a") as fh:
                    fh.write(f"{{i}} {{os.getpid()}}\\n")
                time.sleep(0.05)
                (root / f"{{i}}.done").touch()
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, d]) for d in ("up", "down")]
    assert [p.wait() for p in procs] == [0, 0]
    units = [line.split()[0] for line in log.read_text().splitlines()]
    assert sorted(units, key=int) == [str(i) for i in range(12)]  # each exactly once
    assert len({line.split()[1] for line in log.read_text().splitlines()}) == 2  # both worked
