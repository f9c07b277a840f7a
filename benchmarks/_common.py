"""Shared by the benchmark scripts (run as `python benchmarks/bench_<stage>.py`)."""

from __future__ import annotations

import time


class Clock:
    """Wall and CPU seconds of a block; CPU next to wall shows how busy the machine was."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def __str__(self) -> str:
        return f"{self.wall:7.2f} s wall ({self.cpu:6.2f} s CPU)"
