"""The optional Cellpose segmenter: wiring tested with a stand-in model (no package, no weights needed)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from napari_dinoloc.core import cellpose_backend
from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.images import make_cell_image
from napari_dinoloc.core.segmentation import SegmentationParams, segment
from napari_dinoloc.core.synthetic import make_field


class StandIn:
    """Answers as CellposeModel.eval does (masks, flows, styles) with the true cells; records what it saw."""

    def __init__(self, truth):
        self.truth, self.seen = truth, None

    def eval(self, data, diameter, channels):
        self.seen = (np.asarray(data).shape, diameter, channels)
        return self.truth, None, None


def test_cellpose_gets_cell_and_nucleus_stains_never_the_protein(monkeypatch):
    field = make_field(seed=2, shape=(256, 256), cell_stain=True)
    model = StandIn(field.labels)
    monkeypatch.setattr(cellpose_backend, "load_model", lambda model_type=cellpose_backend.MODEL_TYPE: model)
    found = segment(make_cell_image(field.image, field.stains),
                    SegmentationParams(segmenter="cellpose", keep_border_cells=True, nucleus_diameter=28))
    assert model.seen == ((256, 256, 2), 56.0, [1, 2])  # [microtubules, nucleus], at the cell diameter
    assert found.cells.max() == len(np.unique(field.labels)) - 1
    assert any("Cellpose" in note for note in found.notes)


def test_cellpose_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cellpose", None)  # import fails as if not installed
    field = make_field(seed=2, shape=(128, 128), cell_stain=True)
    with pytest.raises(DinolocError, match="pip install cellpose"):
        segment(make_cell_image(field.image, field.stains), SegmentationParams(segmenter="cellpose"))


def test_unknown_segmenter_refused():
    with pytest.raises(DinolocError, match="Unknown segmenter"):
        SegmentationParams(segmenter="stardist")
