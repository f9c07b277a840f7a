"""How a stage's per-unit work runs: in this process, a process pool, one of N shards, or Dask.

A stage (``tile``, ``embed``) cuts its work into units (a patient's slides, a batch of slides),
each a picklable call ``fn(*job)`` that locks its slides (``brcatool.locks``), writes its outputs
under temporary names and leaves a per-slide record. Every executor runs the *same* unit function
and yields ``(job, result)`` as units finish, so progress, failure rows and resume are the stage's
business and do not depend on where the unit ran:

- ``serial``: in this process (``--workers 1``);
- ``process``: a spawn-context process pool (``--workers N``);
- ``dask``: one task per unit on a ``distributed`` cluster, ``--dask ADDRESS`` (an existing
  scheduler, e.g. dask-jobqueue's SLURMCluster) or ``--dask local:N`` (a LocalCluster of N
  single-threaded worker processes); workers write straight into the shared workdir.

``--shard K/N`` is not an executor but a subset of the units (``Shard.take``: balanced by weight,
the same in every process) run by one of the executors above; a Slurm array gives each task one K.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from brcatool.errors import InputError
from brcatool.patchgrid import stable_hash

DASK_EXTRA = "pip install 'brcatool[dask]'"


# --------------------------------------------------------------------------- shards
@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
        if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
            raise InputError(f"--shard {text!r} is not K/N with 1 <= K <= N",
                             fix="e.g. --shard 1/4, or --shard $SLURM_ARRAY_TASK_ID/$N with a 1-based array")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def take(self, weights: Mapping[str, float]) -> list[str]:
        """This shard's unit ids, in the order given (see ``balanced_shards``)."""
        mine = set(balanced_shards(weights, self.count)[self.index - 1])
        return [u for u in weights if u in mine]


def balanced_shards(weights: Mapping[str, float], n: int) -> list[list[str]]:
    """Split unit ids into ``n`` groups of near-equal total weight, the same in every process.

    Heaviest first (ties by a stable hash of the id, so the input order does not matter), each to
    the lightest group so far (ties: the lowest group): the LPT rule, within 4/3 of the best split.
    """
    loads = [0.0] * n
    groups: list[list[str]] = [[] for _ in range(n)]
    for unit in sorted(weights, key=lambda u: (-float(weights[u]), stable_hash(u), u)):
        k = min(range(n), key=lambda i: (loads[i], i))
        groups[k].append(unit)
        loads[k] += max(float(weights[unit]), 1e-9)
    return groups


# --------------------------------------------------------------------------- what to run where
@dataclass(frozen=True)
class RunOptions:
    """Where a stage's units run (execution only: none of this changes the outputs)."""

    workers: int = 1
    shard: str | None = None  # "K/N"
    dask: str | None = None  # scheduler address or "local:N"
    merge: bool = False  # only write the merged tables from the finished records

    def executor_name(self) -> str:
        return "dask" if self.dask else "process" if self.workers > 1 else "serial"

    def validate(self) -> None:
        if self.workers < 1:
            raise InputError("--workers must be >= 1")
        if self.shard is not None:
            Shard.parse(self.shard)
        if self.dask is not None and not self.dask.strip():
            raise InputError("--dask needs a scheduler address or local:N")
        if self.merge and (self.shard or self.dask):
            raise InputError("--merge only writes the tables; give it without --shard/--dask")

    @property
    def shard_spec(self) -> Shard | None:
        return Shard.parse(self.shard) if self.shard else None


Job = tuple
OnError = Callable[[Job, BaseException], Any]


class Executor:
    """Runs ``fn(*job)`` for each job; ``map`` yields ``(job, result)`` as each unit finishes.

    A unit that raises (or whose worker dies) yields ``on_error(job, exc)`` instead, so one bad
    unit never stops the run.
    """

    name = "?"

    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts

    def map(self, fn: Callable[..., Any], jobs: Iterable[Job],
            on_error: OnError) -> Iterator[tuple[Job, Any]]:
        raise NotImplementedError

    @property
    def slots(self) -> int:
        """Units that run at once (stages size their batches from it)."""
        return 1

    def close(self) -> None:
        """Release pools / cluster connections."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


EXECUTORS: dict[str, type[Executor]] = {}


def register(cls: type[Executor]) -> type[Executor]:
    EXECUTORS[cls.name] = cls
    return cls


@register
class SerialExecutor(Executor):
    name = "serial"

    def map(self, fn, jobs, on_error):  # noqa: ANN001, ANN201 - see Executor.map
        for job in jobs:
            try:
                result = fn(*job)
            except Exception as exc:  # noqa: BLE001 - one unit's failure becomes its result
                result = on_error(job, exc)
            yield job, result


@register
class ProcessExecutor(Executor):
    name = "process"

    def __init__(self, opts: RunOptions) -> None:
        super().__init__(opts)
        self._pool = None

    @property
    def slots(self) -> int:
        return self.opts.workers

    def map(self, fn, jobs, on_error):  # noqa: ANN001, ANN201 - see Executor.map
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        jobs = list(jobs)
        if len(jobs) <= 1:  # a pool's start-up buys nothing for one unit
            yield from SerialExecutor(self.opts).map(fn, jobs, on_error)
            return
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.opts.workers, mp_context=ctx)
        futures = {self._pool.submit(fn, *job): job for job in jobs}
        for fut in as_completed(futures):
            try:
                result = fut.result()
            except Exception as exc:  # noqa: BLE001 - a unit or a dead worker process
                result = on_error(futures[fut], exc)
            yield futures[fut], result

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def import_distributed() -> Any:
    """The ``distributed`` module, or a one-line error naming the extra that installs it."""
    try:
        import distributed
    except ImportError:
        raise InputError("--dask needs the optional package `distributed`, which is not installed",
                         fix=DASK_EXTRA) from None
    return distributed


@register
class DaskExecutor(Executor):
    name = "dask"

    def __init__(self, opts: RunOptions) -> None:
        super().__init__(opts)
        distributed = import_distributed()
        address = (opts.dask or "local:1").strip()
        self._cluster = None
        m = re.fullmatch(r"local(?::(\d+))?", address)
        try:
            if m:
                n = int(m.group(1) or 1)
                if n < 1:
                    raise InputError("--dask local:N needs N >= 1")
                self._cluster = distributed.LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                    silence_logs=logging.ERROR)
                self.client = distributed.Client(self._cluster)
            else:
                self.client = distributed.Client(address, timeout="30s")
        except (OSError, TimeoutError) as exc:
            self.close()
            raise InputError(f"cannot reach the Dask scheduler at {address!r} ({exc})",
                             fix="start the scheduler first (dask-jobqueue, `dask scheduler`) "
                                 "and pass its tcp://host:port") from None

    @property
    def slots(self) -> int:
        return max(1, sum(self.client.nthreads().values()))

    def map(self, fn, jobs, on_error):  # noqa: ANN001, ANN201 - see Executor.map
        from distributed import as_completed

        jobs = list(jobs)
        tag = stable_hash(repr([job[:1] for job in jobs]))
        futures = {self.client.submit(fn, *job, pure=False, key=f"{fn.__name__}-{tag}-{i}"): job
                   for i, job in enumerate(jobs)}
        for fut in as_completed(futures):
            job = futures[fut]
            try:
                result = fut.result()
            except Exception as exc:  # noqa: BLE001 - a unit, or a worker killed mid-task
                result = on_error(job, exc)
            fut.release()
            yield job, result

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


def make_executor(opts: RunOptions) -> Executor:
    """The executor ``opts`` asks for (use it as a context manager)."""
    opts.validate()
    return EXECUTORS[opts.executor_name()](opts)
