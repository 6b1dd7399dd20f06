"""Shared pytest fixtures. Keep only fixtures used by more than one test file here."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_dinoloc.core.synthetic import SyntheticField, make_field


@pytest.fixture(scope="session")
def synthetic_field() -> SyntheticField:
    """A small seeded field (2 channels: nucleus, protein) with ground-truth cells and classes."""
    return make_field(seed=0, shape=(384, 384))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real example images in ../shared/data (beside the repository); skipped when absent."""
    folder = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not folder.is_dir():
        pytest.skip("../shared/data is absent")
    return folder


@pytest.fixture(scope="session")
def umap_runner():
    """One UMAP worker process for the whole run: warming one up compiles numba code (~10 s of CPU)."""
    from napari_dinoloc.core.umap_runner import UmapRunner

    runner = UmapRunner()
    runner.warm_up()
    yield runner
    runner.shutdown()


@pytest.fixture(autouse=True)
def private_home(tmp_path_factory, monkeypatch):
    """Files of images without a file of their own (annotations, saved cells) go to a folder of the
    test's, never the user's home: no test restores what another test (or the user) saved."""
    monkeypatch.setenv("NAPARI_DINOLOC_HOME", str(tmp_path_factory.mktemp("home")))
