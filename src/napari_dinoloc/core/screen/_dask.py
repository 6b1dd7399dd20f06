"""Where the tasks run: in this process one after another, or on a dask.distributed cluster
(a LocalCluster of worker processes on this machine, or an existing scheduler's workers).

On a cluster every image (or tile of a very large image) is one task, retried twice if its worker dies; results are small (the
embeddings stay in the shards the tasks write), so the client's memory does not grow with the images."""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

from ..errors import DinolocError
from ._tasks import ShardResult, TaskSpec, run_image
from ._tile_task import run_tile

RETRIES = 2  # a task whose worker was killed runs again, twice at most
GPU = "GPU"  # the worker resource a CUDA task asks for: start GPU workers with --resources GPU=1


def run_task(task, spec: TaskSpec, shard: str) -> ShardResult:
    """One task: a whole image (``ScreenImage``) or one tile of a very large one (``ImageTile``)."""
    if hasattr(task, "tile"):
        return run_tile(task, spec, shard)
    return run_image(task, spec, shard)


class SerialExecutor:
    """Today's plain loop: every task in this process, in order."""

    def results(self, tasks: Sequence, spec: TaskSpec) -> Iterator[ShardResult]:
        for image, shard in tasks:
            yield run_task(image, spec, shard)

    def cancel(self) -> None:
        pass


class DaskExecutor:
    """One task per image (or tile) on a dask.distributed ``Client``, results as they complete."""

    def __init__(self, client):
        self.client = client
        self._futures: list = []

    def results(self, tasks: Sequence, spec: TaskSpec) -> Iterator[ShardResult]:
        from distributed import as_completed

        resources = {GPU: 1} if _wants_gpu(spec) else None
        # a key of its own per submission: a resumed run reusing a just-cancelled task's key got it cancelled
        attempt = uuid.uuid4().hex[:8]
        self._futures = [
            self.client.submit(run_task, image, spec, shard, key=f"dinoloc-{image.key}-{spec.model_hash[:8]}-{attempt}",
                               retries=RETRIES, resources=resources, pure=False)
            for image, shard in tasks
        ]
        for future in as_completed(self._futures):
            if future.status == "error":
                raise future.exception()
            result = future.result()
            future.release()  # the result is recorded; nothing of the task need stay on the client
            yield result

    def cancel(self) -> None:
        if self._futures:
            self.client.cancel([f for f in self._futures if not f.done()])


def _wants_gpu(spec: TaskSpec) -> bool:
    return spec.device == "cuda"


@contextmanager
def executor_for(workers: Optional[int] = None, scheduler: Optional[str] = None) -> Iterator:
    """``scheduler``: an existing cluster's address; ``workers``: a LocalCluster of that many processes
    (one task thread each, torch on its share of the cores: ``_threads``); neither: the serial executor."""
    if not scheduler and workers is None:
        yield SerialExecutor()
        return
    with dask_client(workers, scheduler) as client:
        yield DaskExecutor(client)


@contextmanager
def dask_client(workers: Optional[int] = None, scheduler: Optional[str] = None):
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise DinolocError("--workers and --scheduler need dask.distributed: pip install 'napari-dinoloc[screen]'.") from None
    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise DinolocError(f"Cannot reach the Dask scheduler at {scheduler} ({exc}): start the cluster first, "
                               "and give its address (tcp://host:8786).") from None
        with client:
            yield client
        return
    import logging

    import dask

    from ._threads import environ_restored, local_worker_environ

    # each worker's BLAS/OpenMP threads are its share of the cores, set before its process starts; no
    # statistical profiler (it samples the task thread's stack every 10 ms, measured ~8 % of a task here)
    environ = local_worker_environ(workers)
    config = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in environ.items()}
    config["distributed.worker.profile.enabled"] = False
    with environ_restored(environ):  # again at the end: a restarted worker's nanny writes it once more
        with dask.config.set(config), environ_restored(environ):
            cluster = LocalCluster(n_workers=workers, processes=True, threads_per_worker=1, dashboard_address=None,
                                   silence_logs=logging.ERROR)
        with cluster, Client(cluster) as client:
            yield client
