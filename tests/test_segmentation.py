"""Segmentation against synthetic ground truth, user label images, the cell table, matching."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.images import make_cell_image
from napari_dinoloc.core.segmentation import (
    CellTable,
    SegmentationParams,
    match_cells,
    prepare_labels,
    segment,
    segment_cells,
    segment_nuclei,
)
from napari_dinoloc.core.synthetic import make_field


KEEP_BORDER = SegmentationParams(keep_border_cells=True)  # compared with every ground-truth cell


def field_image(field):
    return make_cell_image(field.image, field.stains, name="synthetic")


@pytest.fixture(scope="module")
def stained_field():
    """The shared synthetic field with a cell stain (microtubules) as a third channel."""
    return make_field(seed=0, shape=(384, 384), cell_stain=True)


def test_segments_the_shared_synthetic_field(stained_field):
    done = []
    labels = segment_cells(field_image(stained_field), KEEP_BORDER, progress=lambda d, t, w: done.append((d, t)))
    assert labels.dtype == np.int32 and labels.shape == stained_field.labels.shape
    np.testing.assert_array_equal(np.unique(labels[labels > 0]), np.arange(1, labels.max() + 1))
    assert match_cells(labels, stained_field.labels) >= 0.9
    assert done[-1][0] == done[-1][1]  # progress reached its end


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_ground_truth_on_several_seeds(seed):
    field = make_field(seed=seed, shape=(384, 384), cell_stain=True)
    labels = segment_cells(field_image(field), KEEP_BORDER)
    assert match_cells(labels, field.labels) >= 0.9


def test_matches_ground_truth_in_a_crowded_field():
    # As many cells as fit: nearly every cell touches a neighbour.
    field = make_field(seed=4, shape=(320, 320), n_cells=300, cell_stain=True)
    touching = (field.labels[:, :-1] != field.labels[:, 1:]) & (field.labels[:, :-1] > 0) & (field.labels[:, 1:] > 0)
    assert len(np.unique(field.labels[:, :-1][touching])) > 0.6 * field.labels.max()
    labels = segment_cells(field_image(field), KEEP_BORDER)
    assert match_cells(labels, field.labels) >= 0.9


def test_matches_ground_truth_on_a_large_field():
    field = make_field(seed=7, shape=(1024, 1024), cell_stain=True)
    labels = segment_cells(field_image(field), KEEP_BORDER)
    assert match_cells(labels, field.labels) >= 0.9


def test_nuclei_are_split_and_found(synthetic_field):
    image = field_image(synthetic_field)
    nuclei = segment_nuclei(image.channel("nucleus"), SegmentationParams())
    assert nuclei.dtype == np.int32
    assert match_cells(nuclei, synthetic_field.nuclei) >= 0.95


def test_cells_grow_on_a_chosen_stain(synthetic_field):
    image = field_image(synthetic_field).with_stains(["nucleus", "er"])  # the second channel, renamed
    labels = segment_cells(image, SegmentationParams(cytoplasm_stain="er", keep_border_cells=True))
    assert match_cells(labels, synthetic_field.labels) >= 0.9
    with pytest.raises(DinolocError, match="no 'microtubules' channel"):
        segment_cells(image, SegmentationParams(cytoplasm_stain="microtubules"))


def test_nucleus_only_image_gives_nuclei_as_cells_and_says_so(synthetic_field):
    image = make_cell_image(synthetic_field.image[:1], ["nucleus"])
    found = segment(image, KEEP_BORDER)
    assert found.cells.max() >= 0.9 * synthetic_field.labels.max()
    assert match_cells(found.cells, synthetic_field.nuclei) >= 0.9  # the cells are the nuclei
    assert any("only a nucleus stain" in note for note in found.notes)


def test_without_a_cell_stain_cells_are_a_ring_not_the_protein(synthetic_field):
    found = segment(field_image(synthetic_field), KEEP_BORDER)
    assert found.cell_stain is None and any("no cell stain" in note for note in found.notes)
    assert (found.cells > 0).sum() > (found.nuclei > 0).sum()  # a ring around each nucleus


def test_no_nucleus_channel_is_explained(synthetic_field):
    image = make_cell_image(synthetic_field.image, ["other", "protein"])
    with pytest.raises(DinolocError, match="no nucleus channel.*assign one.*label image"):
        segment_cells(image)


def test_no_cells_found_suggests_sizes():
    rng = np.random.default_rng(0)
    image = make_cell_image(rng.integers(100, 110, (2, 96, 96)).astype(np.uint16), ["nucleus", "protein"])
    with pytest.raises(DinolocError, match="No (nuclei|cells) found.*nucleus diameter of [0-9.]+ px.*sizes"):
        segment_cells(image)


def test_bad_sizes_are_refused():
    with pytest.raises(DinolocError, match="cell diameter"):
        SegmentationParams(nucleus_diameter=40, cell_diameter=20)


# ---------------------------------------------------------------------------------------------
# User label images
# ---------------------------------------------------------------------------------------------


def test_prepare_labels_relabels_sequentially_as_int32():
    labels = np.zeros((1, 10, 12), np.uint16)
    labels[0, 1:3, 1:3], labels[0, 5:7, 5:7], labels[0, 8:10, 1:4] = 7, 300, 42
    prepared = prepare_labels(labels, (10, 12))
    assert prepared.dtype == np.int32 and prepared.shape == (10, 12)
    np.testing.assert_array_equal(np.unique(prepared), [0, 1, 2, 3])
    assert prepared[1, 1] == 1 and prepared[8, 1] == 2 and prepared[5, 5] == 3  # order kept


def test_prepare_labels_refuses_a_wrong_shape_naming_both():
    with pytest.raises(DinolocError, match=r"\(10, 12\).*\(20, 24\)"):
        prepare_labels(np.ones((10, 12), np.int32), (20, 24))


def test_prepare_labels_refuses_empty_and_fractional():
    with pytest.raises(DinolocError, match="empty"):
        prepare_labels(np.zeros((5, 5), np.int32), (5, 5))
    with pytest.raises(DinolocError, match="fractional"):
        prepare_labels(np.full((5, 5), 1.5), (5, 5))


# ---------------------------------------------------------------------------------------------
# Cell table and matching
# ---------------------------------------------------------------------------------------------


def test_cell_table_from_labels():
    labels = np.zeros((20, 30), np.int32)
    labels[2:6, 3:9] = 5  # 4 x 6
    labels[10:19, 20:23] = 2  # 9 x 3
    table = CellTable.from_labels(labels)
    assert len(table) == 2
    np.testing.assert_array_equal(table.label, [2, 5])
    np.testing.assert_array_equal(table.area, [27, 24])
    np.testing.assert_allclose(table.centroid_y, [14.0, 3.5])
    np.testing.assert_allclose(table.centroid_x, [21.0, 5.5])
    np.testing.assert_array_equal(table.bbox, [[10, 20, 19, 23], [2, 3, 6, 9]])
    assert table.index_of(5) == 1
    with pytest.raises(KeyError):
        table.index_of(3)
    assert len(CellTable.from_labels(np.zeros((4, 4), np.int32))) == 0


def test_match_cells_counts_one_to_one_matches():
    truth = np.zeros((10, 20), np.int32)
    truth[:, :10], truth[:, 10:] = 1, 2
    assert match_cells(truth, truth) == 1.0
    merged = (truth > 0).astype(np.int32)  # one cell over both: IoU 0.5 with each, only one may match
    assert match_cells(merged, truth, iou=0.5) == 0.5
    shifted = np.roll(truth, 4, axis=1)  # each cell overlaps its truth by 6 of 14 columns: IoU 0.43
    assert match_cells(shifted, truth, iou=0.5) == 0.0
    assert match_cells(shifted, truth, iou=0.4) == 1.0


def test_segmentation_stops_when_cancelled():
    from napari_dinoloc.core.errors import Cancelled
    from napari_dinoloc.core.progress import CancelToken

    field = make_field(seed=1, shape=(256, 256))
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        segment_cells(make_cell_image(field.image, field.stains), cancel=token)
