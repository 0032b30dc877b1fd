"""Thread policy for every entry point: how many CPU threads diffaudit may use, and how they wait.

On a shared machine the CPUs this process may use are fewer than ``os.cpu_count()``: the scheduler
affinity mask (``taskset``, Slurm, containers) and the cgroup CPU quota (Docker ``--cpus``, Kubernetes
limits) both cap them. Threads beyond that only time-slice against each other.

OpenMP (torch's intra-op pool, FAISS) defaults to spinning while waiting for work. Next to busy
processes a spinning thread burns the time slice its sibling needs, so a 2-thread step can take many
times longer than a 1-thread one (issue 15: 12.3x slower training next to one busy process per core).
``OMP_WAIT_POLICY=PASSIVE`` makes idle OpenMP threads sleep instead. libgomp reads it once, when the
library is loaded, so ``apply_thread_policy`` must run before torch or faiss is imported: the CLI calls it
while parsing the top-level options, before a subcommand module is imported.

Precedence of the thread count: an explicit number (``diffaudit --threads N``) > the environment
variable ``DIFFAUDIT_THREADS`` > the CPUs this process may use.

numpy's and scipy's BLAS (the OpenBLAS builds of their wheels, with the "pthreads" threading layer) run on
ONE thread unless ``DIFFAUDIT_NUMPY_BLAS_THREADS`` says otherwise (``limit_numpy_blas``). Their worker threads
synchronise on every call, and the audit makes many small calls (FD's eigh and square roots, KID's subset
kernels, moment errors): next to one busy process per core, a sprites-16 memorizer audit's convergence stage
took 38.7 s with two numpy BLAS threads against 1.3 s with one (0.96 s idle either way), and the whole audit
94 s against 43 s (idle: 21 s with two, 28 s with one; ``benchmarks/README.md``, noisy neighbours). torch and
FAISS keep the thread count above: their OpenMP runtimes honour the passive wait policy and measured close to
a fair share under load. The limit is set through ``threadpoolctl`` on the libraries themselves (an
environment variable would reach FAISS's OpenBLAS too), so it needs numpy and scipy.linalg loaded: this
module loads them (about 0.3 s), never torch or faiss.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from diffaudit.errors import DiffauditError

ENV_VAR = "DIFFAUDIT_THREADS"
NUMPY_BLAS_ENV_VAR = "DIFFAUDIT_NUMPY_BLAS_THREADS"  # numpy/scipy BLAS threads (default 1; module docstring)
# Thread-count variables of the BLAS/OpenMP runtimes torch, numpy and FAISS link against.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

# Training FLOPs per optimizer step (forward + backward ~ 6 x parameters x batch) below which torch trains
# on one thread, measured by benchmarks/bench_load.py on 2 CPUs (benchmarks/README.md): 1 thread was faster
# for 3-layer MLPs at 3.5e8 (width 256) and 1.3e9 (width 512) FLOPs/step, 2 threads faster at 5.0e9 (width
# 1024); the break-even is taken as the geometric middle of that bracket. Next to busy processes the
# fork/join of extra threads costs far more than it saves, which is what puts small models on one thread.
SINGLE_THREAD_BELOW_FLOPS = 2.5e9

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_quota_cpus(root: Path = _CGROUP_ROOT) -> int | None:
    """CPUs allowed by the cgroup CPU quota (rounded up), or None without a quota.

    cgroup v2: ``cpu.max`` holds "QUOTA PERIOD" or "max PERIOD"; v1: ``cpu/cpu.cfs_quota_us`` (-1 for
    none) and ``cpu/cpu.cfs_period_us``.
    """
    try:
        parts = (root / "cpu.max").read_text().split()
        if len(parts) >= 2 and parts[0] != "max":
            return max(1, math.ceil(int(parts[0]) / int(parts[1])))
        return None
    except (OSError, ValueError, ZeroDivisionError):
        pass
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        try:
            quota = int((v1 / "cpu.cfs_quota_us").read_text())
            period = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        if quota > 0 and period > 0:
            return max(1, math.ceil(quota / period))
        return None
    return None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup CPU quota; at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        n = os.cpu_count() or 1
    quota = _cgroup_quota_cpus()
    if quota is not None:
        n = min(n, quota)
    return max(1, n)


def _parse_threads(value, source: str) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    if n < 1 or str(value).strip() != str(n):
        raise DiffauditError(f"{source} must be a whole number >= 1, got {value!r}; fix or unset it.")
    return n


def resolve_threads(requested: int | None = None) -> int:
    """The thread count: ``requested`` > ``$DIFFAUDIT_THREADS`` > ``available_cpus()``."""
    if requested is not None:
        return _parse_threads(requested, "--threads")
    env = os.environ.get(ENV_VAR)
    if env is not None and env.strip() != "":
        return _parse_threads(env, ENV_VAR)
    return available_cpus()


def apply_thread_policy(n: int, *, override: bool = False) -> int:
    """Use ``n`` threads in this process and in the processes it starts; returns ``n``.

    Sets ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` to ``n`` and
    ``OMP_WAIT_POLICY=PASSIVE`` where the user has not set them (``override=True``, for an explicit
    ``--threads``, replaces the thread counts but never the wait policy), and calls
    ``torch.set_num_threads`` / ``faiss.omp_set_num_threads`` on those libraries if they are already
    imported (it never imports them). Call it before torch/faiss are imported so the wait policy applies.
    """
    n = _parse_threads(n, "the thread count")
    for var in THREAD_ENV_VARS:
        if override or not os.environ.get(var):
            os.environ[var] = str(n)
    if not os.environ.get("OMP_WAIT_POLICY"):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):
        torch.set_num_threads(n)
    faiss = sys.modules.get("faiss")
    if faiss is not None and hasattr(faiss, "omp_set_num_threads"):
        faiss.omp_set_num_threads(n)
    limit_numpy_blas()
    return n


def numpy_blas_threads() -> int:
    """numpy/scipy BLAS threads: ``$DIFFAUDIT_NUMPY_BLAS_THREADS`` if set, else 1 (module docstring)."""
    env = os.environ.get(NUMPY_BLAS_ENV_VAR)
    if env is not None and env.strip() != "":
        return _parse_threads(env, NUMPY_BLAS_ENV_VAR)
    return 1


def limit_numpy_blas(n: int | None = None) -> list[str]:
    """Set the BLAS libraries with the "pthreads" threading layer that are loaded (numpy's and scipy's
    OpenBLAS; loading numpy and scipy.linalg first) to ``n`` threads (default ``numpy_blas_threads()``).
    Returns the library paths it set; [] without ``threadpoolctl``."""
    n = numpy_blas_threads() if n is None else _parse_threads(n, "the numpy BLAS thread count")
    try:
        import numpy  # noqa: F401  (loads numpy's BLAS)
        import scipy.linalg  # noqa: F401  (loads scipy's BLAS)
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return []
    done = []
    for lib in ThreadpoolController().lib_controllers:
        if getattr(lib, "threading_layer", None) == "pthreads":
            lib.set_num_threads(n)
            done.append(str(lib.filepath))
    return done


def training_threads(flops_per_step: float, threads: int) -> int:
    """Torch threads for training: 1 below the measured break-even ``SINGLE_THREAD_BELOW_FLOPS``."""
    return 1 if flops_per_step < SINGLE_THREAD_BELOW_FLOPS else max(1, int(threads))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` and restore the previous count afterwards."""
    import torch

    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def threads_per_worker(workers: int, cpus: int | None = None) -> int:
    """Threads for each of ``workers`` processes so that workers x threads <= CPUs (at least 1)."""
    cpus = available_cpus() if cpus is None else cpus
    return max(1, cpus // max(1, int(workers)))
