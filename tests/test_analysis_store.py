"""The analysis store: cells and predictions saved per image, restored only when they fit it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from napari_dinoloc.core.analysis_store import (
    SUFFIX, AnalysisStore, analysis_path, may_have_saved, prediction_signature, stale_reason,
)
from napari_dinoloc.core.heads import Predictions

SHAPE = (40, 60)
HASH = "ab" * 32


def cells() -> np.ndarray:
    labels = np.zeros(SHAPE, np.int32)
    labels[2:10, 3:12] = 1
    labels[15:25, 20:35] = 2
    labels[30:38, 40:55] = 3
    return labels


def predictions() -> Predictions:
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32)
    return Predictions(np.array([1, 2, 3]), ("nucleoli", "cytoplasm"), probabilities)


def saved_store(tmp_path, annotations=None, source=None) -> AnalysisStore:
    store = AnalysisStore.open(tmp_path / f"field.tif{SUFFIX}", HASH, SHAPE, "field")
    store.save_cells(cells(), {"source": "segmentation", "requested": {"nucleus_diameter": 12.0}})
    signature = prediction_signature({"backbone": "dinoloc-cells", "weights_hash": "w1"}, "logistic",
                                     annotations or {1: "nucleoli", 2: "cytoplasm"}, source)
    store.save_predictions(predictions(), signature)
    return store


def test_cells_settings_and_predictions_come_back(tmp_path):
    saved_store(tmp_path)
    store = AnalysisStore.open(tmp_path / f"field.tif{SUFFIX}", HASH, (2, *SHAPE), "field")
    assert np.array_equal(store.labels, cells()) and store.labels.dtype == np.int32
    assert store.settings["requested"] == {"nucleus_diameter": 12.0}
    restored = store.predictions.predictions
    assert restored.class_names == ("nucleoli", "cytoplasm")
    assert np.array_equal(restored.labels, [1, 2, 3]) and np.allclose(restored.probabilities, predictions().probabilities)
    assert store.predictions.signature["embedding"]["weights_hash"] == "w1" and not store.notes
    message = store.summary({1: "nucleoli", 2: "cytoplasm"})
    assert message.startswith("Restored 3 cells and predictions from ") and "stale" not in message
    with np.load(store.path, allow_pickle=False) as raw:  # plain arrays: nothing pickled
        assert json.loads(str(raw["meta"][()]))["content_hash"] == HASH


def test_new_cells_drop_the_predictions_of_the_old_ones(tmp_path):
    store = saved_store(tmp_path)
    other = cells()
    other[other == 3] = 0
    assert store.save_cells(other, {"source": "label image", "layer": "mine"})
    reopened = AnalysisStore.open(store.path, HASH, SHAPE)
    assert reopened.predictions is None and reopened.settings == {"source": "label image", "layer": "mine"}
    assert not reopened.save_cells(other, {})  # the same cells: nothing written
    assert reopened.summary({}).startswith("Restored 2 cells from ")


def test_cells_of_another_size_are_ignored_with_a_note(tmp_path):
    store = saved_store(tmp_path)
    reopened = AnalysisStore.open(store.path, HASH, (40, 61))
    assert reopened.labels is None and reopened.predictions is None
    assert "60×40 pixels but the image is 61×40" in reopened.notes[0]
    assert reopened.summary({}) == ""


def test_cells_of_other_pixels_or_a_damaged_file_are_ignored(tmp_path):
    store = saved_store(tmp_path)
    other_pixels = AnalysisStore.open(store.path, "cd" * 32, SHAPE)
    assert other_pixels.labels is None and "another version of this image" in other_pixels.notes[0]
    store.path.write_bytes(b"PK\x03\x04 not really a zip")
    damaged = AnalysisStore.open(store.path, HASH, SHAPE)
    assert damaged.labels is None and "could not be read" in damaged.notes[0]
    damaged.save_cells(cells())  # the next save replaces the damaged file
    assert np.array_equal(AnalysisStore.open(store.path, HASH, SHAPE).labels, cells())


def test_predictions_that_do_not_fit_the_cells_are_dropped(tmp_path):
    store = saved_store(tmp_path)
    bad = Predictions(np.array([1, 2, 99]), ("a", "b"), predictions().probabilities)
    store.save_predictions(bad, {})
    reopened = AnalysisStore.open(store.path, HASH, SHAPE)
    assert reopened.labels is not None and reopened.predictions is None
    assert "cells the label image does not have" in reopened.notes[0]


def test_predictions_are_stale_when_the_annotations_or_the_model_file_changed(tmp_path):
    store = saved_store(tmp_path, annotations={1: "nucleoli", 2: "cytoplasm"})
    assert "stale (your annotations changed since)" in store.summary({1: "nucleoli", 2: "cytoplasm", 3: "nucleoli"})
    assert stale_reason(store.predictions.signature, {2: "cytoplasm", 1: "nucleoli"}) == ""

    bundle = tmp_path / "model.dinoloc"
    bundle.write_bytes(b"one model")
    signature = prediction_signature({}, "logistic", {}, {"bundle": str(bundle)})
    assert stale_reason(signature, {5: "anything"}) == ""  # a saved model does not learn from annotations
    bundle.write_bytes(b"another model, longer")
    assert stale_reason(signature, {}) == "the model file model.dinoloc changed since"
    os.remove(bundle)
    assert stale_reason(signature, {}) == "the model file model.dinoloc is gone"


def test_the_store_lives_beside_the_annotations(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_DINOLOC_HOME", str(tmp_path / "home"))
    image = tmp_path / "field.tif"
    assert analysis_path(HASH, "field", image) == tmp_path / "field.tif.dinoloc-analysis.npz"
    in_home = analysis_path(HASH, "synthetic cells", None)
    assert in_home == tmp_path / "home" / "annotations" / f"synthetic_cells-{HASH[:12]}{SUFFIX}"
    assert not may_have_saved("synthetic cells") and not may_have_saved("field", image)
    AnalysisStore.open(in_home, HASH, SHAPE).save_cells(cells())
    assert may_have_saved("synthetic cells") and not may_have_saved("other image")
    project = tmp_path / "project"
    assert analysis_path(HASH, "field", image, project).parent == project


@pytest.mark.parametrize("labels", [np.zeros((3, 40, 60), np.int32), np.zeros(SHAPE, np.float32)])
def test_saved_labels_that_are_not_a_label_image_are_refused(tmp_path, labels):
    store = saved_store(tmp_path)
    with np.load(store.path, allow_pickle=False) as raw:
        arrays = dict(raw)
    arrays["labels"] = labels
    np.savez_compressed(store.path, **arrays)
    reopened = AnalysisStore.open(store.path, HASH, SHAPE)
    assert reopened.labels is None and "could not be read" in reopened.notes[0]
