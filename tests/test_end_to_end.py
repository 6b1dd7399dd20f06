"""The whole engine on a synthetic field of view: cells -> embeddings -> head -> predictions -> CSV."""

from __future__ import annotations

import numpy as np

from napari_dinoloc.core.backbones import load_backbone
from napari_dinoloc.core.demo import choose_annotated, ground_truth_classes
from napari_dinoloc.core.embedding import EmbedSettings
from napari_dinoloc.core.images import make_cell_image
from napari_dinoloc.core.pipeline import Session
from napari_dinoloc.core.segmentation import SegmentationParams, match_cells
from napari_dinoloc.core.synthetic import make_field
from napari_dinoloc.core.table import columns, read_table, write_table


def test_synthetic_field_to_per_cell_csv(tmp_path, monkeypatch):
    monkeypatch.setenv("DINOLOC_CACHE_DIR", str(tmp_path / "cache"))
    field = make_field(seed=3, shape=(448, 448), cell_stain=True)
    session = Session()
    session.set_image(make_cell_image(field.image, field.stains, name="fov"))

    session.set_labels(session.segment(SegmentationParams(keep_border_cells=True)))  # against every true cell
    assert match_cells(session.labels, field.labels, iou=0.5) >= 0.9

    session.set_backbone(load_backbone("random-tiny", device="cpu"))
    session.set_embeddings(session.compute_embeddings(EmbedSettings(crop_size=64, device="cpu")))
    assert session.embeddings.vectors.shape[0] == len(session.table)
    assert np.array_equal(session.embeddings.labels, session.table.label)

    truth = ground_truth_classes(session.labels, field.labels, field.cell_class)
    annotations = choose_annotated(truth, share=0.5)
    session.set_head(session.train_head("logistic", annotations))
    predicted = dict(zip(session.predictions.labels.tolist(), session.predictions.predicted_names))
    held_out = [cell for cell in truth if cell not in annotations]
    assert held_out and all(cell in predicted for cell in held_out)

    out = write_table(tmp_path / "cells.csv", session.rows(annotations), session.predictions.class_names)
    rows = read_table(out)
    assert list(rows[0]) == columns(session.predictions.class_names)
    assert [int(r["label"]) for r in rows] == session.table.label.tolist()
    assert {int(r["label"]): r["user_label"] for r in rows if r["user_label"]} == annotations
    assert all(r["predicted_class"] in session.predictions.class_names for r in rows)
