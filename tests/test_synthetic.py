"""Synthetic fields: deterministic, every class present, ground truth consistent with the image."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.synthetic import CLASS_NAMES, make_field


def test_same_seed_same_field_and_other_seed_differs(synthetic_field):
    again = make_field(seed=0, shape=(384, 384))
    np.testing.assert_array_equal(again.image, synthetic_field.image)
    np.testing.assert_array_equal(again.labels, synthetic_field.labels)
    assert again.cell_class == synthetic_field.cell_class
    other = make_field(seed=1, shape=(384, 384))
    assert not np.array_equal(other.labels, synthetic_field.labels)


def test_field_types_and_shapes(synthetic_field):
    field = synthetic_field
    assert field.image.shape == (2, 384, 384) and field.image.dtype == np.uint16
    assert field.stains == ("nucleus", "protein")
    assert field.labels.dtype == np.int32 and field.nuclei.dtype == np.int32
    assert len(CLASS_NAMES) >= 10 and field.class_names == CLASS_NAMES


def test_all_classes_present_and_balanced(synthetic_field):
    counts = {name: list(synthetic_field.cell_class.values()).count(name) for name in CLASS_NAMES}
    assert min(counts.values()) >= 1
    assert max(counts.values()) - min(counts.values()) <= 1  # round-robin


def test_labels_and_nuclei_are_consistent(synthetic_field):
    labels, nuclei = synthetic_field.labels, synthetic_field.nuclei
    ids = np.unique(labels[labels > 0])
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))  # sequential 1..N
    assert set(synthetic_field.cell_class) == set(ids.tolist())
    np.testing.assert_array_equal(np.unique(nuclei[nuclei > 0]), ids)  # every cell has its nucleus
    inside = nuclei > 0
    np.testing.assert_array_equal(labels[inside], nuclei[inside])  # a nucleus lies in its own cell
    for label in ids:  # each cell is one piece
        assert ndi.label(labels == label)[1] == 1
    areas = np.bincount(labels.ravel())[1:]
    assert areas.std() / areas.mean() > 0.15  # varied sizes


def test_some_cells_touch(synthetic_field):
    labels = synthetic_field.labels
    right = (labels[:, :-1] > 0) & (labels[:, 1:] > 0) & (labels[:, :-1] != labels[:, 1:])
    down = (labels[:-1] > 0) & (labels[1:] > 0) & (labels[:-1] != labels[1:])
    touching = set(labels[:, :-1][right]) | set(labels[:-1][down])
    assert len(touching) >= 4


def test_image_shows_cells_and_nuclei(synthetic_field):
    nucleus, protein = synthetic_field.image.astype(float)
    cells, nuclei = synthetic_field.labels > 0, synthetic_field.nuclei > 0
    assert nucleus[nuclei].mean() > 5 * nucleus[~cells].mean()
    # The dim cytoplasmic baseline makes every cell brighter than the background, even nuclear classes.
    background = np.median(protein[~ndi.binary_dilation(cells, iterations=4)])
    dim_cells = [
        protein[synthetic_field.labels == label].mean() > background + 20
        for label, name in synthetic_field.cell_class.items()
        if name in ("nucleoli", "centrosome")
    ]
    assert all(dim_cells)


def test_classes_and_cell_count_can_be_chosen():
    field = make_field(seed=5, shape=(256, 256), n_cells=6, classes=["golgi", "er"])
    assert 1 <= field.labels.max() <= 6
    assert set(field.cell_class.values()) <= {"golgi", "er"} and field.class_names == ("golgi", "er")
    with pytest.raises(DinolocError, match="Unknown synthetic class"):
        make_field(classes=["lysosome"])


def test_large_field_is_fast():
    start = time.process_time()  # CPU time: other jobs on a shared machine do not count
    field = make_field(seed=2, shape=(1024, 1024))
    assert time.process_time() - start < 4.0  # ~0.7 s here; 2048 x 2048 takes ~3 s
    assert field.labels.max() > 100
