"""UMAP of cell embeddings in a worker process: shape, determinism, tiny inputs, cancel, warm-up."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_dinoloc.core.errors import Cancelled, DinolocError
from napari_dinoloc.core.progress import CancelToken
from napari_dinoloc.core.umap_runner import (
    MIN_CELLS_FOR_UMAP, UmapRunner, centred_unit_rows, compute_umap, default_runner, exact_cosine_knn,
)


def clustered(n: int, dim: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, dim)) * 4
    return (centres[np.arange(n) % 4] + rng.normal(size=(n, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def runner():
    """The shared runner (its worker compiles UMAP once for the whole file)."""
    shared = default_runner()
    yield shared
    shared.shutdown()  # also ends the re-warm after a cancel: no CPU spent after this file


def test_layout_is_finite_and_deterministic_for_a_seed(runner):
    vectors = clustered(80)
    first = compute_umap(vectors, seed=0, runner=runner)
    assert first.shape == (80, 2) and first.dtype == np.float32
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, compute_umap(vectors, seed=0, runner=runner))
    assert not np.array_equal(first, compute_umap(vectors, seed=1, runner=runner))


def test_progress_is_reported(runner):
    seen = []
    compute_umap(clustered(30), runner=runner, progress=lambda done, total, what: seen.append((done, total)))
    assert seen[-1] == (2, 2)


@pytest.mark.parametrize("n", [0, 1, 2, 3, MIN_CELLS_FOR_UMAP - 1])
def test_too_few_cells_get_a_pca_layout_without_the_worker(n):
    fresh = UmapRunner()
    layout = fresh.compute(clustered(n))
    assert layout.shape == (n, 2) and np.isfinite(layout).all()
    assert fresh.worker_pid is None  # no process was started for this
    fresh.shutdown()


@pytest.mark.parametrize("n", [MIN_CELLS_FOR_UMAP, 9])
def test_few_cells_cap_n_neighbors(runner, n):
    layout = compute_umap(clustered(n), runner=runner)
    assert layout.shape == (n, 2) and np.isfinite(layout).all()


def test_identical_cells_do_not_break_the_layout(runner):
    vectors = np.ones((12, 8), dtype=np.float32)
    assert np.isfinite(compute_umap(vectors, runner=runner)).all()


@pytest.mark.parametrize("bad", [np.zeros(5), np.full((6, 3), np.nan)])
def test_bad_vectors_are_explained(runner, bad):
    with pytest.raises(DinolocError):
        compute_umap(bad, runner=runner)


def test_exact_knn_matches_brute_force():
    unit = centred_unit_rows(clustered(50, seed=3))
    indices, distances = exact_cosine_knn(unit, 6)
    brute = 1.0 - unit @ unit.T
    np.testing.assert_array_equal(indices[:, 0], np.arange(50))  # each cell is its own first neighbour
    np.testing.assert_allclose(distances[:, 1:], np.sort(brute, axis=1)[:, 1:6], atol=1e-5)


def test_warm_up_returns_at_once_and_cancel_is_prompt():
    fresh = UmapRunner()
    try:
        started = time.perf_counter()
        warming = fresh.warm_up()
        assert time.perf_counter() - started < 1.0
        token = CancelToken()
        job = fresh.submit(clustered(3000, dim=64), cancel=token)  # waits behind the warm-up's compile
        time.sleep(0.3)
        token.cancel()
        cancelled_at = time.perf_counter()
        with pytest.raises(Cancelled):
            job.result(timeout=5)
        assert time.perf_counter() - cancelled_at < 1.0
        assert not warming.done()  # cancelling a waiting job leaves the warm-up alone
    finally:
        fresh.shutdown()


def test_cancel_of_a_running_fit_kills_the_worker(runner):
    compute_umap(clustered(20), runner=runner)  # warm
    token = CancelToken()
    job = runner.submit(clustered(3000, dim=64), cancel=token)
    time.sleep(0.3)
    process = runner._worker.process
    token.cancel()
    with pytest.raises(Cancelled):
        job.result(timeout=5)
    assert process.wait(timeout=5) is not None


def test_shutdown_stops_the_worker():
    fresh = UmapRunner()
    fresh.warm_up()
    deadline = time.perf_counter() + 10
    while fresh.worker_pid is None and time.perf_counter() < deadline:
        time.sleep(0.05)
    process = fresh._worker.process
    fresh.shutdown()
    assert process.poll() is not None
    with pytest.raises(Cancelled):
        fresh.compute(clustered(20))
