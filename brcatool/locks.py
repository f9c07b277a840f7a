"""Lock files that keep two processes (on one host or many, over shared storage) off one unit.

A lock is a small JSON file (host, pid, process start, time taken, a random token) created
atomically with its content (``_create``: a hard link, else ``O_CREAT | O_EXCL``), so exactly one
creator wins, also on NFS v3+. The holder refreshes the
file's mtime from a daemon thread (``heartbeat``), so a lock stays fresh while its process works.
A lock is stale, and is taken over (and reported, see ``Lock.took_over``), when

- its process is gone on this host (no such pid, or the pid now belongs to a newer process), or
- its file has not been refreshed for ``stale_after`` seconds (a dead holder on another host).

Breaking a stale lock goes through a second, short-lived ``<name>.break`` lock, so two processes
that both find it stale cannot both take it. ``acquire`` / ``locked`` are generic: any path works
(per-slide locks in ``tile``/``embed``; a workdir-level stage lock elsewhere).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from brcatool.errors import BrcaError

log = logging.getLogger("brcatool.locks")

STALE_AFTER = 900.0  # s without a heartbeat before a lock held on another host is taken over
BREAK_STALE = 30.0  # s after which an abandoned ``.break`` file is removed
UNREADABLE_STALE = 5.0  # s after which a lock file without readable content is stale


class LockBusy(BrcaError):
    """The lock is held by a live process (raised by ``locked`` when it may not wait longer)."""


@dataclass(frozen=True)
class LockInfo:
    """Who holds a lock."""

    host: str
    pid: int
    proc_start: int | None  # /proc start tick of the pid (tells a reused pid apart), Linux only
    started: float  # time.time() when taken
    token: str

    def describe(self) -> str:
        age = time.time() - self.started
        return f"pid {self.pid} on {self.host}, taken {age:.0f} s ago"


def _proc_start(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks


def _me() -> LockInfo:
    pid = os.getpid()
    return LockInfo(socket.gethostname(), pid, _proc_start(pid), time.time(), uuid.uuid4().hex)


def read_info(path: str | Path) -> LockInfo | None:
    """The holder written in a lock file; None when there is none or it is still being written."""
    try:
        data = json.loads(Path(path).read_text())
        return LockInfo(**data)
    except (OSError, ValueError, TypeError):
        return None


def _alive_here(info: LockInfo) -> bool:
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    start = _proc_start(info.pid)
    return info.proc_start is None or start is None or start == info.proc_start


def _age(path: Path) -> float | None:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def is_stale(path: str | Path, *, stale_after: float = STALE_AFTER) -> bool:
    """Whether the lock at ``path`` may be taken over (missing counts as not stale: just take it)."""
    path = Path(path)
    age = _age(path)
    if age is None:
        return False
    if age > stale_after:
        return True
    info = read_info(path)
    if info is None:  # unreadable (O_EXCL fallback, killed while writing): stale once a bit old
        return age > UNREADABLE_STALE
    return info.host == socket.gethostname() and not _alive_here(info)


def _create(path: Path, info: LockInfo) -> bool:
    """Create ``path`` holding ``info`` unless it exists; True if this call created it.

    The content is written to a private file first and hard-linked to ``path`` (``link`` fails when
    the name exists: the NFS-safe form of ``O_CREAT | O_EXCL``), so a lock file is never seen half
    written, not even after a kill -9 between creating and writing. Where hard links are not
    supported, ``O_CREAT | O_EXCL`` itself.
    """
    tmp = path.with_name(f".{path.name}.{info.token}")
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(info), fh)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links on this filesystem
            pass
    finally:
        tmp.unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(info), fh)
    return True


_BUSY = "busy"


def _break(path: Path, *, stale_after: float) -> LockInfo | str | None:
    """Remove a stale lock: the previous holder, None if the lock is gone already, or ``_BUSY``."""
    guard = path.with_name(path.name + ".break")
    guard_age = _age(guard)
    if guard_age is not None and guard_age > BREAK_STALE:
        guard.unlink(missing_ok=True)
    if not _create(guard, _me()):
        return _BUSY
    try:
        if not path.exists():
            return None
        if not is_stale(path, stale_after=stale_after):
            return _BUSY
        old = read_info(path) or LockInfo("?", -1, None, 0.0, "")
        path.unlink(missing_ok=True)
        return old
    finally:
        guard.unlink(missing_ok=True)


class Lock:
    """A held lock; ``release()`` (or leaving ``locked``) removes the file if it is still ours."""

    def __init__(self, path: Path, info: LockInfo, took_over: LockInfo | None, heartbeat: float | None):
        self.path, self.info, self.took_over = path, info, took_over
        self._stop = threading.Event()
        self._thread = None
        if heartbeat:
            self._thread = threading.Thread(target=self._beat, args=(heartbeat,), daemon=True,
                                            name=f"lock-heartbeat:{path.name}")
            self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            if not self.held():
                return
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def held(self) -> bool:
        info = read_info(self.path)
        return info is not None and info.token == self.info.token

    def release(self) -> None:
        self._stop.set()
        if self.held():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(path: str | Path, *, stale_after: float = STALE_AFTER, heartbeat: float | None = None,
            ) -> Lock | None:
    """Take the lock at ``path`` now, or return None when a live process holds it.

    ``heartbeat`` (seconds, default ``stale_after / 4``) refreshes the file while held.
    A stale lock is taken over; the previous holder is in ``Lock.took_over`` and logged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    took_over = None
    for _ in range(3):  # create; if stale, break and create again (another may win the race)
        me = _me()
        if _create(path, me):
            lock = Lock(path, me, took_over, heartbeat if heartbeat is not None else stale_after / 4)
            if took_over is not None:
                log.warning("took over stale lock %s (was %s)", path, took_over.describe())
            return lock
        old = _break(path, stale_after=stale_after)
        if old == _BUSY:
            return None
        took_over = old if isinstance(old, LockInfo) else took_over
    return None


@contextlib.contextmanager
def locked(path: str | Path, *, wait: float = 0.0, poll: float = 0.2, stale_after: float = STALE_AFTER,
           heartbeat: float | None = None) -> Iterator[Lock]:
    """Hold the lock at ``path`` for the ``with`` block, waiting up to ``wait`` seconds for it.

    Raises ``LockBusy`` (naming the holder) when it is still held after ``wait``.
    """
    deadline = time.monotonic() + wait
    while True:
        lock = acquire(path, stale_after=stale_after, heartbeat=heartbeat)
        if lock is not None:
            break
        if time.monotonic() >= deadline:
            info = read_info(path)
            holder = info.describe() if info else "another process"
            raise LockBusy(f"locked by {holder}", path=path,
                           fix="wait for it to finish, or delete the lock file if that process is gone")
        time.sleep(poll)
    try:
        yield lock
    finally:
        lock.release()


def holder(path: str | Path) -> LockInfo | None:
    """The live holder of the lock at ``path`` (None when free or stale)."""
    path = Path(path)
    if not path.exists() or is_stale(path):
        return None
    return read_info(path)
