"""Sweep executors: where a sweep's units of work run (this process, a local process pool, Ray).

An executor takes a list of units (each a list of cell records: one cell, or a group of cells trained
together, ``diffaudit.sweeps.groups``) and runs every unit through ``unit_fn``
(``diffaudit.sweeps.run.run_unit``: a group trains in one vectorised loop, then every cell is audited into
``out/cells/<id>`` atomically; one status dict per cell), calling ``on_done(statuses)`` once per unit in the
order units finish. Executors never write cells themselves, so resumability and kill -9 safety are the same
under every executor; an executor only chooses where ``unit_fn`` runs and with how many threads/GPUs.

A new executor is one subclass of ``Executor`` and one ``register_executor(name, factory)`` line; the
``diffaudit sweep --executor`` choices come from ``EXECUTORS``. A factory is called as
``factory(workers=n, ray_address=address)`` (``workers`` already resolved to a number; options that an
executor does not use are ignored) and returns an ``Executor``.

``unit_fn`` is passed in rather than imported because the sweep module imports this one.

Devices. On CUDA the local pool runs one worker per visible GPU (``default_workers``) and pins each worker to
its GPU before torch starts (``gpu_slots``, ``_worker_init``); units wait in the pool's queue and each one
goes to the next worker that is free, so a GPU never holds two units at once when workers == GPUs.
``schedule`` is that rule as a pure function (which worker takes which unit, and when the last one ends), used
by ``diffaudit sweep --dry-run`` for its estimate. Ray requests ``num_gpus`` = 1 per unit (a whole group runs
on one GPU; its size is chosen to fit there) and ``num_cpus`` = threads."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from diffaudit.errors import DiffauditError
from diffaudit.threads import apply_thread_policy, available_cpus, threads_per_worker

# unit_fn(records, out, device, threads, cell_fn) -> one status dict per record:
# {"cell_id", "status": "done" | "skipped" | "failed", "seconds", ["error", "traceback"]}
UnitFn = Callable[[list, str, str, int, Callable | None], list]
OnDone = Callable[[list], None]


class Executor(ABC):
    """Runs units of sweep cells somewhere; options (workers, cluster address) go to ``__init__``."""

    name: str = ""
    description: str = ""  # one line, shown by ``diffaudit sweep --help``

    @abstractmethod
    def run(
        self,
        units: list[list[dict]],
        out: Path,
        *,
        device: str,
        threads: int,
        cell_fn: Callable | None,
        unit_fn: UnitFn,
        on_done: OnDone,
    ) -> None:
        """Run ``unit_fn(unit, str(out), device, threads, cell_fn)`` for every unit and pass each result to
        ``on_done``. A unit whose worker dies is reported to ``on_done`` as failed cells, not raised."""


def _failed(unit: list[dict], error: str) -> list[dict]:
    return [{"cell_id": r["cell_id"], "status": "failed", "error": error, "seconds": 0.0} for r in unit]


class InProcessExecutor(Executor):
    """Units (cells or groups) run one after another in this process (``--workers 1``)."""

    name = "in-process"
    description = "units (cells or groups) one after another in this process"

    def run(self, units, out, *, device, threads, cell_fn, unit_fn, on_done) -> None:
        for u in units:
            on_done(unit_fn(u, str(out), device, threads, cell_fn))


def visible_gpus() -> int:
    """CUDA devices this process sees (0 without torch or CUDA); does not initialise CUDA."""
    with contextlib.suppress(ImportError):
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.device_count())
    return 0


def default_workers(device: str, n_gpus: int | None = None) -> int:
    """One worker per GPU on CUDA (``n_gpus``, default the visible ones), else one per CPU core."""
    if device.startswith("cuda") or device == "auto":
        n = visible_gpus() if n_gpus is None else int(n_gpus)
        if n > 0:
            return n
    return available_cpus()


def gpu_slots(workers: int, n_gpus: int) -> list[int | None]:
    """The GPU index each of ``workers`` pool workers is pinned to: round robin over ``n_gpus`` (worker i
    takes GPU i mod n_gpus), or None for every worker without GPUs."""
    if n_gpus <= 0:
        return [None] * int(workers)
    return [i % int(n_gpus) for i in range(int(workers))]


def schedule(costs: list[float], workers: int) -> tuple[list[int], float]:
    """The pool's rule as a pure function: units in order, each to the worker that is free first (the lowest
    index among ties). Returns the worker of each unit and the time the last unit ends."""
    free = [0.0] * max(1, int(workers))
    where = []
    for c in costs:
        w = min(range(len(free)), key=lambda i: (free[i], i))
        where.append(w)
        free[w] += float(c)
    return where, max(free) if costs else 0.0


def worker_threads(workers: int, threads: int | None = None) -> int:
    """Torch threads per worker: ``threads`` if given, else the available CPUs / ``workers`` (>= 1), so
    that workers x threads never exceeds the CPUs this process may use (affinity, cgroup quota)."""
    return int(threads) if threads else threads_per_worker(workers)


def _worker_init(threads: int, gpu_queue) -> None:
    # before torch is imported in this spawned process: thread counts and the passive OpenMP wait policy
    apply_thread_policy(threads, override=True)
    if gpu_queue is not None:
        # before torch initialises CUDA in this process: the worker sees exactly one GPU, as cuda:0
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_queue.get())
    import torch

    torch.set_num_threads(threads)


class PoolExecutor(Executor):
    """Units (cells or groups) in a spawn process pool of ``workers`` processes, each with a fixed torch
    thread count and, on CUDA, its own GPU (``gpu_slots``: GPUs 0, 1, ... round robin); each unit goes to the
    next free worker."""

    name = "pool"
    description = (
        "units (cells or groups) in a local spawn process pool, fixed threads per worker, "
        "one GPU per worker on CUDA"
    )

    def __init__(self, workers: int):
        self.workers = int(workers)

    def run(self, units, out, *, device, threads, cell_fn, unit_fn, on_done) -> None:
        if not units:
            return
        n_proc = min(self.workers, len(units))
        # spawn, not fork: a forked child inherits torch's thread pools and CUDA state of the parent
        ctx = mp.get_context("spawn")
        gpu_queue = None
        if device.startswith("cuda"):
            gpu_queue = ctx.Manager().Queue()
            for g in gpu_slots(n_proc, max(1, visible_gpus())):
                gpu_queue.put(g)
        with ProcessPoolExecutor(
            max_workers=n_proc, mp_context=ctx, initializer=_worker_init, initargs=(threads, gpu_queue)
        ) as pool:
            futs = {pool.submit(unit_fn, u, str(out), device, threads, cell_fn): u for u in units}
            for f in as_completed(futs):
                try:
                    statuses = f.result()
                except Exception as e:  # the worker process died (OOM, signal)
                    statuses = _failed(futs[f], f"worker died: {e}")
                on_done(statuses)


def _ray_unit(unit_fn, records, out, device, threads, cell_fn):
    apply_thread_policy(threads, override=True)
    return unit_fn(records, out, device, threads, cell_fn)


class RayExecutor(Executor):
    """Each unit (a cell, or a group of cells trained together on one GPU) is a Ray task with ``num_cpus`` =
    threads and ``num_gpus`` = 1 on CUDA, on the cluster at
    ``address`` or on a local instance sized ``workers`` x threads CPUs. On a cluster, ``out`` must be on a
    file system that every node sees under the same path."""

    name = "ray"
    description = "one Ray task per unit (a cell or a group), on --ray-address or a local Ray instance"

    def __init__(self, workers: int, address: str | None = None):
        self.workers = int(workers)
        self.address = address

    def run(self, units, out, *, device, threads, cell_fn, unit_fn, on_done) -> None:
        try:
            import ray
        except ImportError:
            raise DiffauditError(
                "--executor ray needs Ray; install it with pip install 'diffaudit[ray]'."
            ) from None
        if not units:
            return
        started = False
        if not ray.is_initialized():
            try:
                if self.address:
                    ray.init(address=self.address, ignore_reinit_error=True, log_to_driver=False)
                else:
                    ray.init(
                        num_cpus=self.workers * threads,
                        ignore_reinit_error=True,
                        log_to_driver=False,
                        include_dashboard=False,
                    )
            except ConnectionError as e:
                raise DiffauditError(
                    f"--ray-address {self.address}: could not connect to a Ray cluster ({e}); "
                    "start one with 'ray start --head' or omit --ray-address."
                ) from None
            started = True
        try:
            gpus = 1 if device.startswith("cuda") else 0
            remote = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=0)(_ray_unit)
            futs = {
                remote.remote(unit_fn, u, str(Path(out).resolve()), device, threads, cell_fn): u
                for u in units
            }
            pending = list(futs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for f in done:
                    try:
                        statuses = ray.get(f)
                    except Exception as e:  # the task's worker died
                        statuses = _failed(futs[f], f"ray task failed: {e}")
                    on_done(statuses)
        finally:
            if started:
                ray.shutdown()


# ------------------------------------------------------------------------------------------ registry

ExecutorFactory = Callable[..., Executor]


def _local(workers: int, ray_address: str | None = None) -> Executor:
    """units (cells or groups) in this process (--workers 1) or a spawn process pool, fixed threads each"""
    return InProcessExecutor() if workers == 1 else PoolExecutor(workers)


def _ray(workers: int, ray_address: str | None = None) -> Executor:
    """one Ray task per unit (a cell or a group), on --ray-address or a local Ray instance"""
    return RayExecutor(workers, ray_address)


# name -> factory(workers=..., ray_address=...) -> Executor
EXECUTORS: dict[str, ExecutorFactory] = {}


def register_executor(name: str, factory: ExecutorFactory) -> None:
    """Make ``name`` a choice of ``run_sweep(executor=...)`` and ``diffaudit sweep --executor``.

    ``factory`` is called as ``factory(workers=n, ray_address=address)``; its docstring's first line (or a
    ``description`` attribute) is the executor's help text. A name is registered once.
    """
    if name in EXECUTORS and EXECUTORS[name] is not factory:
        raise ValueError(f"executor {name!r} is already registered")
    EXECUTORS[name] = factory


def executor_description(name: str) -> str:
    factory = EXECUTORS[name]
    text = getattr(factory, "description", None) or (factory.__doc__ or "").strip()
    return text.splitlines()[0] if text else ""


def executors_help() -> str:
    """One line per registered executor, for ``--help``."""
    return "; ".join(f"{k}: {executor_description(k)}" for k in sorted(EXECUTORS)) + "."


def check_executor(name: str) -> None:
    if name not in EXECUTORS:
        raise DiffauditError(
            f"--executor {name!r} is not a registered executor; choose one of {', '.join(sorted(EXECUTORS))}."
        )


def make_executor(name: str, *, workers: int, ray_address: str | None = None) -> Executor:
    """The executor registered as ``name``, built with the sweep's options."""
    check_executor(name)
    return EXECUTORS[name](workers=int(workers), ray_address=ray_address)


register_executor("local", _local)
register_executor("ray", _ray)
