"""A damaged embedding cache is never served (issue 10, item 6): it is discarded, recomputed and warned about."""

import numpy as np
import pytest

from napari_dinoloc.core.cache import EmbeddingCache
from napari_dinoloc.core.embedding import embed_cells, embed_field
from test_embedding import SETTINGS, backbone, counted, make_image, make_labels  # noqa: F401 (fixtures)


def damage(cache_dir, change):
    """Rewrite the one stored entry's arrays through ``change(labels, vectors)``."""
    (path,) = cache_dir.glob("*.npz")
    with np.load(path) as stored:
        labels, vectors = change(stored["labels"].copy(), stored["vectors"].copy())
    with open(path, "wb") as handle:
        np.savez(handle, labels=labels, vectors=vectors)


def nan_in(labels, vectors):
    vectors[2, 5] = np.nan
    return labels, vectors


def other_cells(labels, vectors):
    return labels + 100, vectors


def shuffled_cells(labels, vectors):
    return labels[::-1].copy(), vectors


def wider(labels, vectors):
    return labels, np.concatenate([vectors, vectors], axis=1)


def narrower_everywhere(labels, vectors):
    return labels, vectors[:, :10]


@pytest.mark.parametrize("change, why", [
    (nan_in, "NaN"), (other_cells, "not this image's cells"), (shuffled_cells, "not this image's cells"),
    (wider, "wide, expected 64"), (narrower_everywhere, "wide, expected 64"),
])
def test_damaged_cell_embeddings_are_recomputed_with_a_warning(tmp_path, backbone, counted, change, why):  # noqa: F811
    cache = EmbeddingCache(tmp_path)
    image, labels = make_image(), make_labels()
    fresh = embed_cells(image, labels, backbone, SETTINGS, cache=cache)
    damage(tmp_path, change)
    counted.calls = 0
    with pytest.warns(RuntimeWarning, match=f"damaged embedding cache entry.*{why}"):
        again = embed_cells(image, labels, backbone, SETTINGS, cache=cache)
    assert counted.calls > 0  # recomputed, not served
    np.testing.assert_allclose(again.vectors, fresh.vectors, atol=1e-5)
    assert again.labels.tolist() == fresh.labels.tolist()
    counted.calls = 0
    third = embed_cells(image, labels, backbone, SETTINGS, cache=cache)  # the rewritten entry is good again
    assert counted.calls == 0 and np.isfinite(third.vectors).all()


def test_damaged_field_embedding_is_recomputed(tmp_path, backbone):  # noqa: F811
    cache = EmbeddingCache(tmp_path)
    image = make_image()
    fresh = embed_field(image, backbone, SETTINGS, tile_size=32, cache=cache)
    damage(tmp_path, lambda labels, vectors: (labels, vectors * np.nan))
    with pytest.warns(RuntimeWarning, match="NaN"):
        again = embed_field(image, backbone, SETTINGS, tile_size=32, cache=cache)
    np.testing.assert_allclose(again.vectors, fresh.vectors, atol=1e-5)


def test_unreadable_description_is_discarded(tmp_path):
    from napari_dinoloc.core.embedding import Embeddings

    cache = EmbeddingCache(tmp_path)
    sig = {"kind": "cells", "image_hash": "abc"}
    cache.put(sig, Embeddings(np.array([1, 2]), np.ones((2, 3), np.float32), {"dim": 3}))
    (tmp_path / next(tmp_path.glob("*.json")).name).write_bytes(b"{\xff not json")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        assert cache.get(sig) is None
    assert list(tmp_path.iterdir()) == []
