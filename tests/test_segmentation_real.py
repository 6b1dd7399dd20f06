"""Issue 9: outlines never from the protein, border cells dropped and counted, sizes measured, swapped channels."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.images import make_cell_image
from napari_dinoloc.core.segmentation import SegmentationParams, match_cells, segment
from napari_dinoloc.core.sizes import estimate_nucleus_diameter, to_pixels
from napari_dinoloc.core.synthetic import make_field


def image_of(field, protein=None):
    data = field.image.copy()
    if protein is not None:
        data[1] = protein
    return make_cell_image(data, field.stains, name="synthetic")


@pytest.fixture(scope="module")
def stained():
    return make_field(seed=3, shape=(384, 384), cell_stain=True)


@pytest.mark.parametrize("stains", [None, ("nucleus", "protein", "microtubules")])
def test_outlines_do_not_change_when_the_protein_changes(stained, stains):
    other = make_field(seed=11, shape=(384, 384), classes=("vesicles",))  # another protein pattern entirely
    first = segment(image_of(stained)).cells
    second = segment(image_of(stained, protein=other.image[1])).cells
    np.testing.assert_array_equal(first, second)
    # also without a cell stain (the ring): the protein plays no part
    two = make_cell_image(stained.image[:2], ("nucleus", "protein"))
    swapped = make_cell_image(np.stack([stained.image[0], other.image[1]]), ("nucleus", "protein"))
    np.testing.assert_array_equal(segment(two).cells, segment(swapped).cells)


def test_the_protein_cannot_be_the_cell_stain():
    with pytest.raises(DinolocError, match="protein cannot be the cell stain"):
        SegmentationParams(cytoplasm_stain="protein")


def test_cell_stain_found_automatically_and_cells_match(stained):
    found = segment(image_of(stained))
    assert found.cell_stain == "microtubules"
    truth = stained.labels.copy()
    edge = np.unique(np.concatenate([truth[0], truth[-1], truth[:, 0], truth[:, -1]]))
    truth[np.isin(truth, edge[edge > 0])] = 0
    assert match_cells(found.cells, truth) >= 0.9


def test_border_cells_dropped_and_counted(stained):
    kept = segment(image_of(stained), SegmentationParams(keep_border_cells=True)).cells
    on_border = np.unique(np.concatenate([kept[0], kept[-1], kept[:, 0], kept[:, -1]]))
    on_border = on_border[on_border > 0]
    assert len(on_border) > 0
    found = segment(image_of(stained))
    assert found.border_cells_dropped == len(on_border)
    assert found.cells.max() == kept.max() - len(on_border)
    assert not np.any(np.concatenate([found.cells[0], found.cells[-1], found.cells[:, 0], found.cells[:, -1]]))
    assert any(f"{len(on_border)} cell(s) touching the image border dropped" in n for n in found.notes)


@pytest.mark.parametrize("cell_diameter", [30.0, 56.0, 100.0])
def test_nucleus_size_estimate_within_25_percent(cell_diameter):
    field = make_field(seed=5, shape=(512, 512), cell_diameter=cell_diameter)
    nuclei = field.nuclei
    areas = np.bincount(nuclei.ravel())[1:]
    true_diameter = float(np.median(2 * np.sqrt(areas[areas > 0] / np.pi)))
    estimate = estimate_nucleus_diameter(field.image[0].astype(np.float32) / field.image[0].max())
    assert abs(estimate - true_diameter) <= 0.25 * true_diameter, (estimate, true_diameter)


def test_measured_size_is_used_and_said(stained):
    found = segment(image_of(stained))
    assert found.params.nucleus_diameter is not None
    assert any("nucleus diameter measured" in n for n in found.notes)
    given = segment(image_of(stained), SegmentationParams(nucleus_diameter=25.0))
    assert given.params.nucleus_diameter == 25.0 and not any("measured" in n for n in given.notes)


def test_sizes_in_micrometres():
    assert to_pixels(6.5, 0.65, "nucleus diameter") == pytest.approx(10.0)
    with pytest.raises(DinolocError, match="--pixel-size"):
        to_pixels(6.5, None, "nucleus diameter")


def test_swapped_channels_get_a_warning_naming_the_fix(stained):
    # the microtubule stain given as the nucleus: a blob covering most of each cell
    data = stained.image[[2, 1, 0]]
    found = segment(make_cell_image(data, ("nucleus", "protein", "other")), SegmentationParams(keep_border_cells=True))
    assert any(n.startswith("warning:") and "swapped" in n and "--channels" in n for n in found.notes), found.notes


def test_no_nuclei_names_the_likely_fix():
    rng = np.random.default_rng(0)
    image = make_cell_image(rng.integers(100, 110, (2, 96, 96)).astype(np.uint16), ["nucleus", "protein"])
    with pytest.raises(DinolocError, match="swapped.*--channels"):
        segment(image)
