"""Cell and field crops: centred, zero-padded at borders, masked, each cell once, produced lazily."""

import tracemalloc
import types

import numpy as np
import pytest

from napari_dinoloc.core.crops import iter_cell_crops, iter_field_crops
from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.segmentation import CellTable


def make_image(data):
    return types.SimpleNamespace(data=np.asarray(data, np.float32), stains=("nucleus", "protein")[: len(data)])


def square_cells(shape, centres, half=3):
    labels = np.zeros(shape, np.int32)
    for label, (y, x) in enumerate(centres, start=1):
        labels[max(y - half, 0):y + half + 1, max(x - half, 0):x + half + 1] = label
    return labels


def test_crop_is_centred_on_the_cell_centroid():
    labels = square_cells((40, 50), [(20, 25)])
    data = np.zeros((2, 40, 50), np.float32)
    data[1, 20, 25] = 1.0
    data[0, 18, 27] = 0.5
    table = CellTable.from_labels(labels)
    ((ids, crops),) = list(iter_cell_crops(make_image(data), labels, table, crop_size=16))
    assert ids.tolist() == [1] and crops.shape == (1, 2, 16, 16) and crops.dtype == np.float32
    assert crops[0, 1, 8, 8] == 1.0  # centroid at crop_size // 2
    assert crops[0, 0, 6, 10] == 0.5


def test_border_cells_are_zero_padded():
    labels = square_cells((30, 30), [(1, 2)], half=1)
    rng = np.random.default_rng(0)
    data = rng.random((2, 30, 30), dtype=np.float32) + 0.1  # no zeros inside the image
    table = CellTable.from_labels(labels)
    ((_, crops),) = list(iter_cell_crops(make_image(data), labels, table, crop_size=10, mask_background=False))
    crop = crops[0]
    cy, cx = int(round(table.centroid_y[0])), int(round(table.centroid_x[0]))
    top, left = cy - 5, cx - 5
    assert not crop[:, : -top].any() and not crop[:, :, : -left].any()  # outside the image: zeros
    np.testing.assert_array_equal(crop[:, -top:, -left:], data[:, : 10 + top, : 10 + left])


def test_background_and_neighbours_are_masked():
    labels = square_cells((40, 40), [(20, 16), (20, 24)], half=3)
    data = np.ones((2, 40, 40), np.float32)
    table = CellTable.from_labels(labels)
    ((_, masked),) = list(iter_cell_crops(make_image(data), labels, table, crop_size=20, mask_background=True))
    ((_, kept),) = list(iter_cell_crops(make_image(data), labels, table, crop_size=20, mask_background=False))
    for i, label in enumerate(table.label):
        cy, cx = int(round(table.centroid_y[i])), int(round(table.centroid_x[i]))
        own = labels[cy - 10:cy + 10, cx - 10:cx + 10] == label
        np.testing.assert_array_equal(masked[i, 0], own.astype(np.float32))  # only this cell's pixels
        assert kept[i].all()


def test_batches_yield_every_cell_once_in_table_order():
    centres = [(y, x) for y in range(10, 100, 15) for x in range(10, 100, 15)]
    labels = square_cells((110, 110), centres, half=2)
    table = CellTable.from_labels(labels)
    batches = list(iter_cell_crops(make_image(np.ones((1, 110, 110))), labels, table, crop_size=8, batch_size=5))
    ids = np.concatenate([b[0] for b in batches])
    assert ids.tolist() == table.label.tolist() and len(ids) == len(centres)
    assert all(len(b[0]) == 5 for b in batches[:-1]) and 1 <= len(batches[-1][0]) <= 5
    assert all(b[1].shape[0] == len(b[0]) for b in batches)


def test_crops_are_made_lazily_with_memory_independent_of_the_number_of_cells():
    centres = [(y, x) for y in range(8, 800, 16) for x in range(8, 800, 16)]  # 2500 cells
    labels = square_cells((800, 800), centres, half=3)
    image = make_image(np.ones((2, 800, 800)))
    table = CellTable.from_labels(labels)
    crop, batch = 32, 8
    batch_bytes = batch * 2 * crop * crop * 4
    all_bytes = len(centres) * 2 * crop * crop * 4  # 20 MB if everything were precomputed

    tracemalloc.start()
    try:
        generator = iter_cell_crops(image, labels, table, crop_size=crop, batch_size=batch)
        assert tracemalloc.get_traced_memory()[1] < batch_bytes  # nothing made yet
        count = 0
        for ids, crops in generator:
            count += len(ids)
            del crops
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == len(centres)
    assert peak < 4 * batch_bytes + 200_000 < all_bytes / 10


def test_field_crops_whole_image_and_tiles():
    data = np.arange(2 * 30 * 50, dtype=np.float32).reshape(2, 30, 50) + 1
    ((ids, whole),) = list(iter_field_crops(make_image(data), None, batch_size=4))
    assert ids.tolist() == [0] and whole.shape == (1, 2, 50, 50)
    np.testing.assert_array_equal(whole[0, :, 10:40], data)  # centred vertically in the padded square
    assert not whole[0, :, :10].any() and not whole[0, :, 40:].any()

    batches = list(iter_field_crops(make_image(data), 20, batch_size=4))
    ids = np.concatenate([b[0] for b in batches])
    tiles = np.concatenate([b[1] for b in batches])
    assert ids.tolist() == list(range(6)) and tiles.shape == (6, 2, 20, 20)  # 2 rows x 3 columns
    np.testing.assert_array_equal(tiles[4, :, :10, :], data[:, 20:30, 20:40])  # row 1, column 1
    assert not tiles[5, :, :, 10:].any() and not tiles[5, :, 10:].any()  # edge tile padded


def test_wrong_labels_or_sizes_are_refused():
    image = make_image(np.zeros((2, 20, 20)))
    labels = np.zeros((10, 10), np.int32)
    with pytest.raises(DinolocError, match="label image"):
        iter_cell_crops(image, labels, CellTable.from_labels(labels), crop_size=8)
    labels = np.zeros((20, 20), np.int32)
    with pytest.raises(DinolocError, match="crop size"):
        iter_cell_crops(image, labels, CellTable.from_labels(labels), crop_size=0)
    with pytest.raises(DinolocError, match="batch size"):
        iter_field_crops(image, 8, batch_size=0)
