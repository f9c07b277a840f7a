"""Long-lived thread pools, one per purpose and process, for work that releases the GIL
(openslide decodes, Blosc encodes).

Starting threads per slide costs more than the work on a small slide (a thread start is ~0.1 ms,
and a tile run started ~7 per slide); these pools start their threads once. A pool inherited
through ``fork`` has no threads (waiting on it would never end) and a lock another thread held at
the fork stays held, so a forked child drops them all and makes its own on first use.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

_POOLS: dict[str, ThreadPoolExecutor] = {}
_LOCK = threading.Lock()


def pool(name: str, workers: int) -> ThreadPoolExecutor:
    """This process's pool ``name`` (``workers`` threads, fixed by its first caller).

    Jobs of one pool must never wait on jobs of the same pool (the pool could be full of waiters).
    """
    with _LOCK:
        found = _POOLS.get(name)
        if found is None:
            found = _POOLS[name] = ThreadPoolExecutor(max(1, workers), thread_name_prefix=f"brcatool-{name}")
        return found


def run_all(pool: ThreadPoolExecutor, fn: Callable[..., Any], *iterables: Iterable[Any]) -> list[Any]:
    """``fn`` over ``iterables`` on ``pool``; returns the results in order once every call has
    ended, then raises the first failure. (``pool.map`` raises as soon as one call fails, while the
    others still run: a caller that then closes what they use, e.g. a slide handle inside
    ``openslide_read_region``, crashes the process.)"""
    futures = [pool.submit(fn, *args) for args in zip(*iterables, strict=True)]
    wait(futures)
    return [f.result() for f in futures]


def cores(at_most: int) -> int:
    """CPU cores this process may use, at most ``at_most`` (at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(at_most, n))


def _forget_after_fork() -> None:
    global _LOCK
    _LOCK = threading.Lock()
    _POOLS.clear()


os.register_at_fork(after_in_child=_forget_after_fork)

