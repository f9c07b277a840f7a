"""Shared by the benchmark scripts (run as `python benchmarks/bench_<stage>.py`).

A stage's figure means something only next to its raw limit measured in the same run on the same
(often busy) machine. ``interleave`` runs the cases of a comparison one after the other in every
round (the order rotating from round to round), so a burst of load hurts every case alike;
``Series`` holds one case's values, ``report_ratio`` prints a stage/limit ratio with min / median /
max of the per-round ratios and the load average, as one ``target:`` line that ``make bench``
collects at the end.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


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


def load() -> float:
    """The 1-minute load average (``os.getloadavg``); print it with every figure."""
    return os.getloadavg()[0]


def spread(values: list[float], fmt: str = "7.2f") -> str:
    """``min / median / max`` of ``values``."""
    return " / ".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))


@dataclass
class Series:
    """One case's measurements, one per round (seconds, or a rate), with the load before each."""

    name: str
    values: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def line(self, unit: str = "s", fmt: str = "7.2f") -> str:
        return (f"{self.name:<34} {spread(self.values, fmt)} {unit} (min / median / max of "
                f"{len(self.values)}; load {spread(self.loads, '.1f')})")


def interleave(cases: Mapping[str, Callable[[], float]], repeats: int, *, warmup: int = 1,
               verbose: bool = True) -> dict[str, Series]:
    """Run every case once per round for ``repeats`` rounds (after ``warmup`` unrecorded rounds).

    Each case returns its measurement (e.g. seconds). The order rotates every round (A B C, B C A,
    ...), so no case always runs right after the same neighbour. Returns one ``Series`` per case.
    """
    names = list(cases)
    out = {name: Series(name) for name in names}
    for r in range(-warmup, repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            before = load()
            value = cases[name]()
            if r >= 0:
                out[name].values.append(value)
                out[name].loads.append(before)
        if verbose and r >= 0:
            print(f"  round {r + 1}/{repeats}: " + ", ".join(
                f"{n} {out[n].values[-1]:.3g}" for n in names) + f" (load {load():.1f})", flush=True)
    return out


def ratios(num: Series, den: Series) -> list[float]:
    """Per-round ratios ``num / den`` (the rounds pair measurements taken moments apart)."""
    return [a / b for a, b in zip(num.values, den.values, strict=True)]


def report_ratio(name: str, num: Series, den: Series, *, target: float | None,
                 at_most: bool = True) -> bool:
    """Print one ``target:`` line: the per-round ratios num/den (min / median / max), the ratio of
    the medians, the target and whether the median per-round ratio meets it (``None``: no ratio
    target, the line is for information), and the load."""
    r = ratios(num, den)
    med = statistics.median(r)
    met = target is None or (med <= target if at_most else med >= target)
    verdict = "no ratio target" if target is None else \
        f"{'<=' if at_most else '>='} {target:g}: {'met' if met else 'NOT met'}"
    print(f"target: {name}: ratio {spread(r, '.2f')} (min / median / max of {len(r)} interleaved "
          f"rounds; ratio of medians {num.median / den.median:.2f}) {verdict}; "
          f"load {spread(num.loads + den.loads, '.1f')}", flush=True)
    return met


def report_value(name: str, series: Series, *, below: float, unit: str = "s") -> bool:
    """Print one ``target:`` line for an absolute target: min / median / max against ``below``."""
    met = series.median < below
    print(f"target: {name}: {spread(series.values, '.2f')} {unit} (min / median / max of "
          f"{len(series.values)}) < {below:g} {unit}: {'met' if met else 'NOT met'}; "
          f"load {spread(series.loads, '.1f')}", flush=True)
    return met


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    """A case for ``interleave``: ``fn``'s wall seconds."""

    def run() -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return run
