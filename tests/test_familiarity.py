"""Unfamiliar cells: cells far from every training cell are flagged, in predictions, bundles, the CSV and warnings."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from napari_dinoloc.cli import main
from napari_dinoloc.core.bundle import ModelBundle, load_bundle, save_bundle
from napari_dinoloc.core.errors import DinolocError
from napari_dinoloc.core.heads import (
    Familiarity, Predictions, fit_familiarity, train_head, unfamiliar_summary, unfamiliar_warning,
)
from napari_dinoloc.core.heads import _familiarity
from napari_dinoloc.core.segmentation import CellTable
from napari_dinoloc.core.table import cell_rows, columns, read_table

from test_cli import TINY, model, private_cache, samples  # noqa: F401  (fixtures)
from test_heads import blobs

QUICK = {"knn": {}, "logistic": {}, "mlp": {"epochs": 20}}


def shifted(x: np.ndarray, seed: int = 9) -> np.ndarray:
    """The same cells moved together in one direction, as another microscope or stain would move them."""
    direction = np.random.default_rng(seed).normal(size=x.shape[1])
    return (x + 4.0 * direction / np.linalg.norm(direction)).astype(np.float32)


def noise(like: np.ndarray, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=like.shape) * like.std() * 3).astype(np.float32)


@pytest.mark.parametrize("kind", sorted(QUICK))
def test_cells_of_another_distribution_are_unfamiliar_and_training_like_cells_are_not(kind):
    x, y = blobs(40, seed=1)
    head = train_head(kind, x, y, **QUICK[kind])
    same, _ = blobs(50, seed=2)  # new cells drawn like the training cells
    assert head.predict(same).unfamiliar.mean() < 0.10
    assert head.predict(shifted(same)).unfamiliar.mean() > 0.9
    assert head.predict(noise(same)).unfamiliar.mean() > 0.9
    assert head.predict(same).unfamiliar.dtype == bool and head.predict(same).familiarity_known


def test_threshold_is_a_high_percentile_of_the_training_cells_nearest_neighbour_distances():
    x, _ = blobs(30, seed=1)
    familiarity = fit_familiarity(x)
    d = np.sqrt(((x[:, None, :].astype(np.float64) - x[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    assert familiarity.threshold == pytest.approx(np.percentile(d.min(axis=1), 99), rel=1e-5)
    assert familiarity.reference.shape == x.shape and familiarity.training_cells == len(x)


def test_many_training_cells_keep_a_sample_as_reference(monkeypatch):
    monkeypatch.setattr(_familiarity, "MAX_REFERENCE", 60)
    x, _ = blobs(50, seed=1)  # 200 cells
    familiarity = fit_familiarity(x)
    assert familiarity.reference.shape == (60, x.shape[1]) and familiarity.training_cells == 200
    same, _ = blobs(50, seed=2)
    assert familiarity.unfamiliar(same).mean() < 0.10 and familiarity.unfamiliar(shifted(same)).mean() > 0.9


def test_predictions_without_the_flag_say_so():
    old = Predictions(np.array([1, 2]), ("a", "b"), np.array([[0.8, 0.2], [0.3, 0.7]], dtype=np.float32))
    assert old.unfamiliar.tolist() == [False, False] and not old.familiarity_known
    assert "saved before" in unfamiliar_summary(old)
    new = replace(old, unfamiliar=np.array([True, False]), familiarity_known=True)
    assert unfamiliar_summary(new) == "1 of 2 cells unfamiliar"


def test_the_warning_fires_when_most_cells_of_an_image_are_unfamiliar():
    probabilities = np.full((10, 2), 0.5, dtype=np.float32)
    flags = np.arange(10) < 6
    warning = unfamiliar_warning(Predictions(np.arange(1, 11), ("a", "b"), probabilities, flags), "field_7")
    assert warning.startswith("6 of 10 cells in field_7 are unfamiliar") and "trained on other data" in warning
    assert unfamiliar_warning(Predictions(np.arange(1, 11), ("a", "b"), probabilities, np.arange(10) < 5)) is None


# ---- bundles -----------------------------------------------------------------------------------------
def bundle_of(head) -> ModelBundle:
    return ModelBundle(head=head, backbone_name="random-tiny", weights_hash="random:0", stains=("nucleus", "protein"),
                       strategy="natural", embedding="cls", crop_size=64, input_size=32, normalization="imagenet",
                       mask_background=False, class_counts={}, metrics={}, seed=0)


def test_a_bundle_keeps_the_threshold_and_flags_the_same_cells(tmp_path):
    x, y = blobs(30, seed=1)
    head = train_head("logistic", x, y)
    loaded = load_bundle(save_bundle(bundle_of(head), tmp_path / "m.dinoloc")).head
    assert loaded.familiarity.threshold == head.familiarity.threshold > 0
    assert np.array_equal(loaded.familiarity.reference, head.familiarity.reference)
    queries = np.concatenate([blobs(20, seed=2)[0], shifted(blobs(20, seed=3)[0])])
    assert np.array_equal(loaded.predict(queries).unfamiliar, head.predict(queries).unfamiliar)
    assert loaded.predict(queries).unfamiliar.sum() >= 80


def test_a_bundle_saved_before_the_flag_still_loads_and_flags_nothing(tmp_path):
    x, y = blobs(30, seed=1)
    head = train_head("knn", x, y)
    head.familiarity = None  # as heads were saved before
    loaded = load_bundle(save_bundle(bundle_of(head), tmp_path / "old.dinoloc")).head
    predictions = loaded.predict(shifted(x))
    assert loaded.familiarity is None and not predictions.familiarity_known and not predictions.unfamiliar.any()


def test_a_crafted_reference_of_the_wrong_width_is_refused(tmp_path):
    x, y = blobs(30, seed=1)
    head = train_head("logistic", x, y)
    head.familiarity = Familiarity(np.zeros((5, 7), np.float32), 1.0)
    path = save_bundle(bundle_of(head), tmp_path / "bad.dinoloc")
    with pytest.raises(DinolocError, match="damaged or crafted"):
        load_bundle(path)


# ---- the per-cell table and the command line -----------------------------------------------------------
def test_the_csv_has_an_unfamiliar_column_last():
    labels = np.zeros((10, 10), np.int32)
    labels[1:4, 1:4], labels[6:9, 6:9] = 1, 2
    predictions = Predictions(np.array([1, 2]), ("a", "b"), np.array([[0.9, 0.1], [0.2, 0.8]], np.float32),
                              np.array([False, True]))
    rows = cell_rows("img", CellTable.from_labels(labels), predictions)
    assert columns(["a", "b"])[-1] == "unfamiliar" and list(rows[0]) == columns(["a", "b"])
    assert [r["unfamiliar"] for r in rows] == [False, True]
    assert [r["unfamiliar"] for r in cell_rows("img", CellTable.from_labels(labels), None)] == ["", ""]


def test_predict_counts_unfamiliar_cells_and_warns_when_most_are(samples, model, tmp_path, capsys, monkeypatch):  # noqa: F811
    args = ["predict", str(samples / "field_001.tif"), "--labels", str(samples / "field_001_labels.tif"),
            "--model", str(model), *TINY]
    assert main([*args, "--out", str(tmp_path / "a.csv")]) == 0
    rows = read_table(tmp_path / "a.csv")
    flagged = sum(r["unfamiliar"] == "True" for r in rows)
    assert {r["unfamiliar"] for r in rows} <= {"True", "False"}
    captured = capsys.readouterr()
    assert f"{flagged} of {len(rows)} cells unfamiliar" in captured.out
    assert "trained on other data" not in captured.err

    monkeypatch.setattr(Familiarity, "unfamiliar", lambda self, vectors: np.ones(len(vectors), dtype=bool))
    assert main([*args, "--out", str(tmp_path / "b.csv")]) == 0
    assert all(r["unfamiliar"] == "True" for r in read_table(tmp_path / "b.csv"))
    err = capsys.readouterr().err
    assert f"dinoloc: warning: {len(rows)} of {len(rows)} cells in field_001 are unfamiliar" in err
