"""The gallery's engine: thumbnails (pixels, per-cell contrast, colours) and which cells, in what order."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dinoloc.core.cell_labels import CellTable
from napari_dinoloc.core.crops import cell_window
from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.gallery import (
    ALL, ANNOTATED, ENTROPY, LABEL, MARGIN, NOT_ANNOTATED, PREDICTED, SCORE, cells_to_annotate, choose_cells, entropy,
)
from napari_dinoloc.core.heads import Predictions
from napari_dinoloc.core.images import CellImage
from napari_dinoloc.core.thumbnails import (
    COMPOSITE_VIEW, OUTSIDE_CELL, PROTEIN_VIEW, cell_thumbnails, iter_thumbnails, thumbnail_window,
)


# ---- thumbnails -------------------------------------------------------------------------------------
def two_cell_image(dim: float = 0.05, bright: float = 0.9) -> tuple[CellImage, np.ndarray, CellTable]:
    """Two square cells, a dim one and a bright one, with a nucleus spot each and a protein stripe."""
    labels = np.zeros((80, 120), np.int32)
    labels[20:60, 10:50] = 1
    labels[20:60, 70:110] = 2
    protein = np.zeros(labels.shape, np.float32)
    protein[labels == 1] = dim / 4
    protein[labels == 2] = bright / 4
    protein[20:60, 28:32] = dim       # a stripe through cell 1
    protein[20:60, 88:92] = bright    # and through cell 2
    nucleus = np.zeros(labels.shape, np.float32)
    nucleus[35:45, 25:35] = 0.8
    nucleus[35:45, 85:95] = 0.8
    image = CellImage(np.stack([nucleus, protein]), ("nucleus", "protein"), "two cells", "hash")
    return image, labels, CellTable.from_labels(labels)


def test_thumbnails_are_uint8_rgb_in_the_order_asked():
    image, labels, table = two_cell_image()
    thumbnails = cell_thumbnails(image, labels, table, [2, 1], size=32)
    assert thumbnails.shape == (2, 32, 32, 3) and thumbnails.dtype == np.uint8
    alone = cell_thumbnails(image, labels, table, [1], size=32)
    assert np.array_equal(thumbnails[1], alone[0])


def test_contrast_is_per_cell_so_a_dim_cell_is_as_readable_as_a_bright_one():
    image, labels, table = two_cell_image(dim=0.05, bright=0.9)
    dim, bright = cell_thumbnails(image, labels, table, [1, 2], size=40, window=40)
    assert dim.max() == bright.max() == 255
    assert np.abs(dim.astype(int) - bright.astype(int)).max() <= 2  # same picture once contrast is per cell


def test_the_protein_view_is_grey_and_the_composite_colours_the_stains():
    image, labels, table = two_cell_image()
    grey = cell_thumbnails(image, labels, table, [1], size=40, view=PROTEIN_VIEW, window=40)[0]
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    composite = cell_thumbnails(image, labels, table, [1], size=40, view=COMPOSITE_VIEW, window=40)[0].astype(int)
    stripe, nucleus = composite[5, 20], composite[20, 15]  # window starts at the cell's corner (20, 10)
    assert stripe[1] > 200 and stripe[0] < 20               # protein: green
    assert nucleus[2] > 200 and nucleus[2] > nucleus[1]     # nucleus: blue


def test_the_cells_neighbours_are_dimmed():
    image, labels, table = two_cell_image(dim=0.9, bright=0.9)
    window = 140  # centred on cell 1, it reaches the stripe of cell 2
    thumbnail = cell_thumbnails(image, labels, table, [1], size=window, window=window)[0].astype(int)
    inside = cell_window(labels[None], (table.centroid_y[0], table.centroid_x[0]), window)[0]
    stripe_in_1 = thumbnail[inside == 1][:, 1].max()
    stripe_in_2 = thumbnail[inside == 2][:, 1].max()
    assert stripe_in_2 == pytest.approx(stripe_in_1 * OUTSIDE_CELL, abs=2)


def test_thumbnails_come_in_chunks_and_refuse_unknown_views():
    image, labels, table = two_cell_image()
    chunks = list(iter_thumbnails(image, labels, table, [1, 2, 1], size=16, chunk=2))
    assert [ids.tolist() for ids, _ in chunks] == [[1, 2], [1]]
    with pytest.raises(DinolocError, match="composite"):
        cell_thumbnails(image, labels, table, [1], view="rainbow")
    with pytest.raises(DinolocError, match="no cell 7"):
        cell_thumbnails(image, labels, table, [7])


def test_the_window_holds_the_cells():
    _, _, table = two_cell_image()
    assert thumbnail_window(table) >= 40


# ---- which cells, in what order ------------------------------------------------------------------------
LABELS = np.array([3, 5, 8, 9, 12])
CLASSES = ("golgi", "nucleoli")
PROBABILITIES = np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8], [0.48, 0.52], [0.7, 0.3]])


def predictions(labels=LABELS) -> Predictions:
    return Predictions(np.asarray(labels), CLASSES, PROBABILITIES[:len(labels)])


def test_score_sorts_the_most_probable_first():
    cells = choose_cells(LABELS, predictions(), sort=SCORE)
    assert cells.labels.tolist() == [3, 8, 12, 5, 9]
    assert cells.values.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.55, 0.52])


def test_a_predicted_class_is_scored_by_that_class():
    cells = choose_cells(LABELS, predictions(), show=PREDICTED, class_name="nucleoli", sort=SCORE)
    assert cells.labels.tolist() == [8, 9]
    assert cells.values.tolist() == pytest.approx([0.8, 0.52])


def test_uncertainty_sorts_by_margin_or_entropy():
    by_margin = choose_cells(LABELS, predictions(), sort=MARGIN)
    assert by_margin.labels.tolist() == [9, 5, 12, 8, 3]
    assert by_margin.values.tolist() == pytest.approx([0.04, 0.1, 0.4, 0.6, 0.8])
    by_entropy = choose_cells(LABELS, predictions(), sort=ENTROPY)
    assert by_entropy.labels.tolist() == [9, 5, 12, 8, 3]
    assert by_entropy.values[0] == pytest.approx(entropy(PROBABILITIES[3:4])[0])
    assert entropy(np.array([[0.5, 0.5]]))[0] == pytest.approx(np.log(2))


def test_annotated_and_not_annotated_cells():
    annotations = {5: "golgi", 9: "golgi", 3: "nucleoli"}
    golgi = choose_cells(LABELS, predictions(), annotations, show=ANNOTATED, class_name="golgi", sort=SCORE)
    assert golgi.labels.tolist() == [5, 9]
    assert golgi.values.tolist() == pytest.approx([0.55, 0.48])  # the score of the class shown
    rest = choose_cells(LABELS, predictions(), annotations, show=NOT_ANNOTATED, sort=LABEL)
    assert rest.labels.tolist() == [8, 12]


def test_cells_without_a_prediction_go_last_by_number():
    cells = choose_cells(LABELS, predictions(LABELS[:3]), sort=MARGIN)
    assert cells.labels.tolist() == [5, 8, 3, 9, 12]
    assert np.isnan(cells.values[-2:]).all()
    assert choose_cells(LABELS, None, show=PREDICTED, class_name="golgi").labels.tolist() == []
    assert choose_cells([9, 3, 5], None, show=ALL).labels.tolist() == [3, 5, 9]
    with pytest.raises(DinolocError, match="margin"):
        choose_cells(LABELS, sort="colour")


def test_next_cells_are_the_most_uncertain_unannotated():
    batch = cells_to_annotate(LABELS, annotated=[9], predictions=predictions(), count=2)
    assert batch.labels.tolist() == [5, 12]
    assert batch.values.tolist() == pytest.approx([0.1, 0.4])
    assert cells_to_annotate(LABELS, annotated=LABELS, predictions=predictions()).labels.tolist() == []


def test_next_cells_before_any_prediction_are_random_unannotated_ones():
    batch = cells_to_annotate(LABELS, annotated=[3, 5], count=2, rng=np.random.default_rng(0))
    assert len(batch) == 2 and set(batch.labels.tolist()) <= {8, 9, 12}
    assert len(cells_to_annotate(LABELS, annotated=[3], count=10).labels) == 4
