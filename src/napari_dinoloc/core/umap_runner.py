"""UMAP of the cell embeddings, computed in a separate worker process.

Why a process: umap-learn's first fit in a process spends seconds compiling numba code, and the
compilation (and umap's small-data distance loop) holds the GIL, which froze the napari window
when UMAP ran in a thread (measured: benchmarks/bench_responsiveness.py). So one persistent
worker process is started lazily, warmed up with a tiny fit in the background when the plugin
opens (``warm_up()``), and killed on cancel (then restarted on demand) and at exit.

The worker is a fresh interpreter started with ``python -c`` rather than ``multiprocessing``'s
spawn context: spawn re-runs the user's ``__main__`` script in the child, and a napari script
without an ``if __name__ == "__main__"`` guard would open a second viewer. Messages are pickled
over the child's stdin/stdout; the child's print output goes to stderr.

Layout choices (documented for reproducibility):
- n_neighbors 15, min_dist 0.1 (as in DINO4Cells); n_neighbors capped at N - 1 for few cells.
- Distance: cosine on mean-centred embeddings. DINO features are compared by angle (DINO's
  k-NN evaluation uses cosine); centring first removes the direction shared by every cell, which
  would otherwise squeeze all angles together.
- Neighbours are found exactly with a blockwise matrix product (BLAS, fast, deterministic) and
  handed to UMAP as ``precomputed_knn``; this avoids umap's per-pair Python loop for < 4096
  points and pynndescent's compile. Above ``EXACT_KNN_MAX_CELLS`` cells UMAP's own approximate
  search is used.
- Seeded (``random_state``), so a layout is reproducible; umap then runs single-threaded.
- Fewer than ``MIN_CELLS_FOR_UMAP`` cells: a PCA projection instead (UMAP needs a neighbour
  graph); the plot can say so by checking ``uses_pca_fallback(n)``.
"""

from __future__ import annotations

import atexit
import os
import pickle
import queue
import subprocess
import sys
import threading
import traceback
import warnings
import weakref
from concurrent.futures import Future
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import Cancelled, DinolocError
from .progress import CancelToken, ProgressCallback, check_cancel, report

N_NEIGHBORS = 15
MIN_DIST = 0.1
MIN_CELLS_FOR_UMAP = 5
EXACT_KNN_MAX_CELLS = 30_000
_KNN_BLOCK = 1024
_POLL_SECONDS = 0.05


# ---- the layout itself (runs in the worker process; also usable in-process) ----------------
def uses_pca_fallback(n_cells: int) -> bool:
    return n_cells < MIN_CELLS_FOR_UMAP


def _check_vectors(vectors) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise DinolocError(f"UMAP needs one embedding row per cell (an N x D array), got shape {vectors.shape}.")
    if not np.all(np.isfinite(vectors)):
        raise DinolocError("Some cell embeddings are NaN or infinite: embed the cells again.")
    return vectors


def centred_unit_rows(vectors: np.ndarray) -> np.ndarray:
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return (centred / np.maximum(norms, 1e-12)).astype(np.float32)


def exact_cosine_knn(unit: np.ndarray, k: int, cancel: Optional[CancelToken] = None):
    """Indices (N,k) int32 and cosine distances (N,k) float32; each cell is its own first neighbour."""
    n = unit.shape[0]
    indices = np.empty((n, k), dtype=np.int32)
    distances = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, _KNN_BLOCK):
        check_cancel(cancel)
        stop = min(start + _KNN_BLOCK, n)
        similarity = unit[start:stop] @ unit.T
        rows = np.arange(stop - start)
        similarity[rows, start + rows] = np.inf  # self first, even among duplicate cells
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        nearest_sim = np.take_along_axis(similarity, nearest, axis=1)
        order = np.argsort(-nearest_sim, axis=1, kind="stable")
        indices[start:stop] = np.take_along_axis(nearest, order, axis=1)
        distances[start:stop] = np.clip(1.0 - np.take_along_axis(nearest_sim, order, axis=1), 0.0, 2.0)
    return indices, distances


def pca_layout(vectors: np.ndarray) -> np.ndarray:
    """2-D PCA projection; used when there are too few cells for UMAP."""
    n = vectors.shape[0]
    if n < 2:
        return np.zeros((n, 2), dtype=np.float32)
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    layout = np.zeros((n, 2), dtype=np.float32)
    width = min(2, s.size)
    layout[:, :width] = u[:, :width] * s[:width]
    return layout


def compute_umap_here(
    vectors,
    seed: int = 0,
    n_neighbors: int = N_NEIGHBORS,
    min_dist: float = MIN_DIST,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> np.ndarray:
    """UMAP in this process (blocking, holds the GIL while numba compiles): (N, 2) float32."""
    vectors = _check_vectors(vectors)
    n = vectors.shape[0]
    if uses_pca_fallback(n):
        return pca_layout(vectors)
    k = max(2, min(int(n_neighbors), n - 1))
    report(progress, 0, 2, "UMAP: finding nearest neighbours")
    unit = centred_unit_rows(vectors)
    knn = exact_cosine_knn(unit, k, cancel) if n <= EXACT_KNN_MAX_CELLS else (None, None, None)
    check_cancel(cancel)
    report(progress, 1, 2, "UMAP: laying out the cells")
    layout = _fit_umap(unit, k, min_dist, seed, knn)
    report(progress, 2, 2, "UMAP: done")
    return layout


def _fit_umap(unit, k, min_dist, seed, knn) -> np.ndarray:
    import umap  # lazy: importing umap (and numba) takes seconds

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state", precomputed-knn notes
        model = umap.UMAP(
            n_neighbors=k,
            min_dist=min_dist,
            metric="cosine",
            random_state=int(seed),
            precomputed_knn=knn,
            n_components=2,
        )
        layout = model.fit_transform(unit)
    return np.asarray(layout, dtype=np.float32)


def _warm_up_here() -> None:
    """A tiny fit through the same code path as real ones, so numba compiles it now."""
    sample = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32)
    compute_umap_here(sample)


# ---- the worker process -----------------------------------------------------------------------
def _serve() -> None:
    """Worker main loop: read pickled requests from stdin, answer on the original stdout."""
    channel_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # prints from umap/numba go to stderr, never into the message stream
    sys.stdout = sys.stderr
    channel_in = sys.stdin.buffer
    if hasattr(os, "nice"):
        os.nice(5)  # background work: the GUI process keeps the CPU when both want it

    def send(message) -> None:
        pickle.dump(message, channel_out, protocol=pickle.HIGHEST_PROTOCOL)
        channel_out.flush()

    while True:
        try:
            request = pickle.load(channel_in)
        except EOFError:
            return  # the parent has gone
        kind, job_id = request[0], request[1]
        if kind == "exit":
            return
        send(_run_request(request, lambda done, total, what: send(("progress", job_id, done, total, what))))


def _run_request(request, progress) -> tuple:
    kind, job_id = request[0], request[1]
    try:
        if kind == "warmup":
            _warm_up_here()
            return ("result", job_id, None)
        vectors, params = request[2], request[3]
        return ("result", job_id, compute_umap_here(vectors, progress=progress, **params))
    except DinolocError as error:
        return ("error", job_id, "dinoloc", str(error))
    except Exception:  # noqa: BLE001 - sent to the parent, which shows it
        return ("error", job_id, "crash", traceback.format_exc())


def _child_environment() -> dict:
    """The parent's environment, plus the folder this package was imported from (it may only be
    on the parent's ``sys.path``, e.g. a source checkout)."""
    package_parent = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    return env


class _WorkerProcess:
    """One child interpreter and a thread that turns its answers into a queue."""

    def __init__(self) -> None:
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if sys.platform == "win32" else 0
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from napari_dinoloc.core.umap_runner import _serve; _serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            creationflags=flags,
            env=_child_environment(),
        )
        self.messages: "queue.Queue[tuple]" = queue.Queue()
        self.warm = False
        self.reader = threading.Thread(target=self._read_answers, name="dinoloc-umap-reader", daemon=True)
        self.reader.start()

    def _read_answers(self) -> None:
        try:
            while True:
                self.messages.put(pickle.load(self.process.stdout))
        except (EOFError, OSError, pickle.UnpicklingError, ValueError):
            self.messages.put(("dead", None))

    def send(self, message) -> None:
        try:
            pickle.dump(message, self.process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self.process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as error:
            raise DinolocError("The UMAP worker process stopped: try again.") from error

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self, join_seconds: float = 5.0) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait()
        if self.reader is not threading.current_thread():
            self.reader.join(join_seconds)  # the killed child's pipe ends: the reader sees EOF
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass


# ---- the parent side ---------------------------------------------------------------------------
class UmapRunner:
    """Runs UMAP jobs one at a time in a persistent worker process.

    ``compute()`` blocks (call it from a worker thread); ``submit()`` and ``warm_up()`` return a
    ``concurrent.futures.Future`` at once. Cancelling a job kills the worker so the call returns
    within ~0.1 s; the next job starts a new one.
    """

    def __init__(self) -> None:
        self._worker: Optional[_WorkerProcess] = None
        self._job_lock = threading.Lock()
        self._next_job_id = 0
        self._closed = False
        self._worker_lock = threading.Lock()  # starting a worker and shutting down never interleave
        self._threads: list[threading.Thread] = []  # warm-ups and submitted jobs: shutdown joins them
        _RUNNERS.add(self)

    @property
    def worker_pid(self) -> Optional[int]:
        worker = self._worker
        return worker.process.pid if worker is not None and worker.alive() else None

    @property
    def is_warm(self) -> bool:
        return self._worker is not None and self._worker.warm and self._worker.alive()

    def warm_up(self) -> Future:
        """Start the worker and compile UMAP in it, in the background (returns at once)."""
        return self._in_thread(self._run_job, ("warmup",), None, None)

    def submit(self, vectors, progress=None, cancel=None, **params) -> Future:
        return self._in_thread(self.compute, vectors, progress=progress, cancel=cancel, **params)

    def _in_thread(self, function, *args, **kwargs) -> Future:
        if self._closed:
            future: Future = Future()
            future.set_exception(Cancelled("UMAP was shut down (the viewer closed)."))
            return future
        future, thread = _in_daemon_thread(function, *args, **kwargs)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        return future

    def compute(
        self,
        vectors,
        seed: int = 0,
        n_neighbors: int = N_NEIGHBORS,
        min_dist: float = MIN_DIST,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
    ) -> np.ndarray:
        """(N, 2) layout of ``vectors``; raises ``Cancelled`` promptly when ``cancel`` is set."""
        vectors = _check_vectors(vectors)
        if uses_pca_fallback(vectors.shape[0]):
            return pca_layout(vectors)  # instant: no need for the worker
        params = {"seed": int(seed), "n_neighbors": int(n_neighbors), "min_dist": float(min_dist)}
        return self._run_job(("umap", vectors, params), progress, cancel)

    def shutdown(self, join_seconds: float = 10.0) -> None:
        """Kill the worker process and wait for this runner's threads: nothing is left behind."""
        with self._worker_lock:
            self._closed = True
            self.stop_worker()
        for thread in list(self._threads):
            if thread is not threading.current_thread():
                thread.join(join_seconds)  # each sees the closed runner within _POLL_SECONDS

    # -- internals
    def _run_job(self, request: tuple, progress, cancel) -> np.ndarray:
        if not self.is_warm:
            report(progress, 0, 2, "UMAP: preparing its worker (the first time compiles UMAP: up to a minute)")
        self._acquire_job_lock(cancel)
        try:
            worker = self._ensure_worker()
            job_id = self._new_job_id()
            worker.send((request[0], job_id, *request[1:]))
            result = self._wait_for_answer(worker, job_id, progress, cancel)
            worker.warm = True
            return result
        finally:
            self._job_lock.release()

    def _acquire_job_lock(self, cancel) -> None:
        while not self._job_lock.acquire(timeout=_POLL_SECONDS):
            check_cancel(cancel)  # e.g. waiting behind the warm-up
        if self._closed:
            self._job_lock.release()
            raise Cancelled("UMAP was shut down (the viewer closed).")

    def _ensure_worker(self) -> _WorkerProcess:
        with self._worker_lock:
            if self._closed:  # shut down meanwhile: start no new process
                raise Cancelled("UMAP was shut down (the viewer closed).")
            if self._worker is None or not self._worker.alive():
                if self._worker is not None:
                    self._worker.kill()
                self._worker = _WorkerProcess()
            return self._worker

    def _new_job_id(self) -> int:
        self._next_job_id += 1
        return self._next_job_id

    def _wait_for_answer(self, worker: _WorkerProcess, job_id: int, progress, cancel):
        while True:
            if (cancel is not None and cancel.cancelled) or self._closed:
                self.stop_worker()  # a fit cannot be interrupted any other way
                self._rewarm_later()
                raise Cancelled("UMAP cancelled.")
            try:
                message = worker.messages.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
            kind, message_job = message[0], message[1]
            if kind == "dead" and self._closed:
                raise Cancelled("UMAP was shut down (the viewer closed).")
            if kind == "dead":
                raise DinolocError("The UMAP worker process stopped unexpectedly: try again.")
            if message_job != job_id:
                continue  # an answer to a job that was given up
            if kind == "progress":
                report(progress, *message[2:])
            elif kind == "result":
                return message[2]
            elif message[2] == "dinoloc":
                raise DinolocError(message[3])
            else:
                raise RuntimeError(f"UMAP failed in the worker process:\n{message[3]}")

    def _rewarm_later(self) -> None:
        """After a cancel, get a fresh worker compiled while the user decides what to do."""
        if not self._closed:
            self.warm_up()

    def stop_worker(self) -> None:
        """Kill the worker process (a running job raises); the next job starts a new one."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.kill()  # it holds no state worth a graceful exit


def _in_daemon_thread(function, *args, **kwargs) -> tuple[Future, threading.Thread]:
    """Like an executor's submit, but a daemon thread, so a running job never delays exit."""
    future: Future = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(function(*args, **kwargs))
        except BaseException as error:  # noqa: BLE001 - handed to whoever waits on the future
            future.set_exception(error)

    thread = threading.Thread(target=run, name="dinoloc-umap-job", daemon=True)
    thread.start()
    return future, thread


_RUNNERS: "weakref.WeakSet[UmapRunner]" = weakref.WeakSet()


@atexit.register
def _shutdown_all_runners() -> None:
    for runner in list(_RUNNERS):
        runner.shutdown()


def compute_umap(
    vectors,
    seed: int = 0,
    n_neighbors: int = N_NEIGHBORS,
    min_dist: float = MIN_DIST,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    runner: Optional[UmapRunner] = None,
) -> np.ndarray:
    """(N, 2) float32 UMAP layout of the cells (blocking), computed in the shared worker process."""
    runner = runner or default_runner()
    return runner.compute(vectors, seed=seed, n_neighbors=n_neighbors, min_dist=min_dist, progress=progress, cancel=cancel)


_DEFAULT_RUNNER: Optional[UmapRunner] = None
_DEFAULT_LOCK = threading.Lock()


def default_runner() -> UmapRunner:
    """The runner shared by the command line and scripts (widgets own theirs)."""
    global _DEFAULT_RUNNER
    with _DEFAULT_LOCK:
        if _DEFAULT_RUNNER is None or _DEFAULT_RUNNER._closed:
            _DEFAULT_RUNNER = UmapRunner()
        return _DEFAULT_RUNNER
