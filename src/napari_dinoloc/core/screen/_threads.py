"""How many threads a Dask worker's torch (and BLAS) uses: its share of the machine's cores.

Dask's nanny starts every worker with OMP_NUM_THREADS=MKL_NUM_THREADS=OPENBLAS_NUM_THREADS=1 and
MALLOC_TRIM_THRESHOLD_=65536 (config ``distributed.nanny.pre-spawn-environ``). For one model per
worker that is wrong twice: one worker on a 2-core machine ran torch on 1 thread while the plain loop
used both, and the trim threshold fixes glibc's mmap threshold at 128 kB, so every large tensor is a
fresh mmap (page faults on every allocation): embedding ran 3x slower than in the plain loop."""

from __future__ import annotations

import os
from contextlib import contextmanager

_BLAS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def cpu_count() -> int:
    """Cores this process may use (affinity and container limits included, as Dask counts them)."""
    try:
        from dask.system import CPU_COUNT

        return int(CPU_COUNT)
    except ImportError:  # pragma: no cover - the serial loop without dask
        return os.cpu_count() or 1


def share(threads_on_host: int, cores: int | None = None) -> int:
    """Threads for each of ``threads_on_host`` task threads sharing ``cores`` cores: at least one."""
    return max(1, (cores or cpu_count()) // max(1, threads_on_host))


def local_worker_environ(workers: int) -> dict:
    """The nanny's pre-spawn environment for a LocalCluster of ``workers`` one-thread workers: BLAS/OpenMP
    at the worker's share (read when the libraries load, so it must be set before the process starts),
    and no MALLOC_TRIM_THRESHOLD_ (None removes Dask's default). A variable set in the shell still wins."""
    threads = str(share(workers))
    return {**{name: threads for name in _BLAS}, "MALLOC_TRIM_THRESHOLD_": None}


def use_worker_share() -> int | None:
    """On a Dask worker: set torch's threads to this worker's share of its host's cores (cores divided by
    the task threads of all workers on the host, as the scheduler knows them now); returns it. Outside a
    worker (the plain loop): leaves torch as it is and returns None."""
    try:
        from distributed import get_client, get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    try:
        peers = get_client().scheduler_info(n_workers=-1)["workers"].values()
        on_host = sum(w["nthreads"] for w in peers if w.get("host") == worker.ip) or worker.state.nthreads
    except Exception:  # noqa: BLE001 - a scheduler that cannot answer: count this worker alone
        on_host = worker.state.nthreads
    import torch

    threads = share(on_host)
    torch.set_num_threads(threads)
    return threads


@contextmanager
def environ_restored(names):
    """Puts ``names`` back as they were on the way out: the nanny writes its pre-spawn environment into this
    process's os.environ, and a value left there would win over the next cluster's share."""
    before = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
