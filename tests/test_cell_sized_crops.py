"""Issue 9: the default crop window follows the cell size; it is recorded in the signature and the bundle."""

from __future__ import annotations

import numpy as np

from napari_dinoloc.core.backbones import load_backbone
from napari_dinoloc.core.bundle import bundle_for_head, embed_settings_for, load_bundle, save_bundle
from napari_dinoloc.core.embedding import EmbedSettings, embed_cells
from napari_dinoloc.core.embedding._settings import cell_crop_size
from napari_dinoloc.core.heads import train_head
from napari_dinoloc.core.images import make_cell_image
from napari_dinoloc.core.segmentation import CellTable
from napari_dinoloc.core.synthetic import make_field


def test_window_is_two_median_cell_diameters_and_recorded(tmp_path):
    field = make_field(seed=1, shape=(256, 256), n_cells=14, cell_diameter=40)
    image = make_cell_image(field.image, field.stains)
    table = CellTable.from_labels(field.labels)
    extent = np.maximum(table.bbox[:, 2] - table.bbox[:, 0], table.bbox[:, 3] - table.bbox[:, 1])
    expected = int(round(2 * np.median(extent)))
    assert cell_crop_size(table) == expected and 60 < expected < 110

    backbone = load_backbone("random-tiny", device="cpu")
    settings = EmbedSettings(input_size=32, device="cpu")
    found = embed_cells(image, field.labels, backbone, settings, table=table)
    sig = found.signature
    assert sig["crop_mode"] == "cells" and sig["crop_cells"] == 2.0 and sig["crop_size"] == expected
    assert sig["resize_factor"] == 32 / expected

    fixed = embed_cells(image, field.labels, backbone, EmbedSettings(crop_size=224, input_size=32, device="cpu"), table=table)
    assert fixed.signature["crop_mode"] == "fixed" and fixed.signature["crop_size"] == 224
    assert not np.allclose(fixed.vectors, found.vectors)

    classes = ["a" if i % 2 else "b" for i in range(len(found.labels))]
    head = train_head("knn", found.vectors, classes)
    bundle = load_bundle(save_bundle(bundle_for_head(head, backbone, image.stains, settings, classes), tmp_path / "m"))
    assert bundle.crop_size is None and bundle.crop_cells == 2.0
    again = embed_settings_for(bundle, EmbedSettings(device="cpu"))
    assert again.crop_size is None and again.crop_cells == 2.0  # new images are cut by their own cell size
