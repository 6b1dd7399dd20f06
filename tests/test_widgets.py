"""The main dock driven like a user would, in a real napari viewer (Xvfb): the whole flow, then bad input.

Kept lean for 2 cores: a 256 x 256 synthetic field with ~15 cells, the random-tiny backbone at 32 px.
"""

import threading
from dataclasses import dataclass

import numpy as np
import pytest
import torch  # noqa: F401  (torch and timm before Qt: see napari_dinoloc.widgets._workers)
import timm  # noqa: F401

from napari.utils.notifications import NotificationSeverity, notification_manager

from napari_dinoloc._sample_data import synthetic_layers
from napari_dinoloc.core.table import read_table
from napari_dinoloc.widgets._layers import ANNOTATIONS, CELLS, PREDICTED, find_layer
from napari_dinoloc.widgets.dock import DinolocWidget

pytestmark = pytest.mark.gui
TIMEOUT_MS = 60_000


@pytest.fixture(autouse=True)
def private_folders(tmp_path, monkeypatch):
    """Annotations and the embedding cache go to the test's folder, never the home directory."""
    monkeypatch.setenv("NAPARI_DINOLOC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DINOLOC_CACHE_DIR", str(tmp_path / "cache"))
    notification_manager.records.clear()


@dataclass
class FakeMouse:
    type: str
    position: tuple
    pos: tuple = (0.0, 0.0)
    button: int = 1
    modifiers: tuple = ()
    is_dragging: bool = False
    handled: bool = False


def _dispatch(viewer, callbacks, event):
    """As napari's canvas does: the viewer's callbacks, then the active layer's."""
    from napari.utils._proxies import ReadOnlyWrapper

    if event.type == "mouse_press":
        event = ReadOnlyWrapper(event, exceptions=("handled",))
    callbacks(viewer, event)
    if viewer.layers.selection.active is not None:
        callbacks(viewer.layers.selection.active, event)


def click_canvas(viewer, world_yx, button=1, modifiers=()):
    """A press and release at ``world_yx`` through napari's own mouse-callback machinery."""
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    at = tuple(world_yx)
    _dispatch(viewer, mouse_press_callbacks, FakeMouse("mouse_press", at, button=button, modifiers=modifiers))
    _dispatch(viewer, mouse_release_callbacks, FakeMouse("mouse_release", at, button=button, modifiers=modifiers))


def drag_canvas(viewer, world_yx, canvas_px=20):
    """A press, a move of ``canvas_px`` screen pixels and a release: a pan, not a click."""
    from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks

    at = tuple(world_yx)
    _dispatch(viewer, mouse_press_callbacks, FakeMouse("mouse_press", at))
    _dispatch(viewer, mouse_move_callbacks, FakeMouse("mouse_move", at, pos=(canvas_px, 0.0), is_dragging=True))
    _dispatch(viewer, mouse_release_callbacks, FakeMouse("mouse_release", at, pos=(canvas_px, 0.0)))


def press_key(viewer, key):
    """A real key press on the canvas (napari's key handling picks the binding)."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    QTest.keyClick(viewer.window._qt_viewer.canvas.native, getattr(Qt.Key, f"Key_{key}"))


def messages(severity=None):
    return [str(n.message) for n in notification_manager.records if severity is None or n.severity == severity]


def open_dock(make_napari_viewer, qtbot, seed=1):
    viewer = make_napari_viewer()
    for data, kwargs, kind in synthetic_layers(seed, shape=(256, 256), n_cells=15):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    dock = DinolocWidget(viewer)
    viewer.window.add_dock_widget(dock, name="DINO localization")
    return viewer, dock


def wait_idle(qtbot, dock):
    qtbot.waitUntil(lambda: not dock.runner.busy, timeout=TIMEOUT_MS)


def use_truth(dock):
    """The sample's ground-truth cells as the label image: instant, for tests about later steps."""
    dock.image_panel.labels_source.setCurrentText("ground truth cells")
    dock.image_panel.use_labels_button.click()


def segment(qtbot, dock):
    dock.image_panel.segment_button.click()
    wait_idle(qtbot, dock)


def embed(qtbot, dock):
    dock.model_panel.choose("random-tiny", input_size=32, crop_size=48)
    dock.model_panel.embed_button.click()
    wait_idle(qtbot, dock)


def cells_of_true_class(viewer, state, per_class=3):
    """Segmented cells grouped by the ground-truth class under their centroid."""
    truth = find_layer(viewer, "ground truth cells")
    true_class = dict(zip(truth.features["label"], truth.features["true_class"]))
    table, chosen = state.session.table, {}
    for label, y, x in zip(table.label, table.centroid_y, table.centroid_x):
        name = true_class.get(int(truth.data[int(round(y)), int(round(x))]))
        if name and len(chosen.setdefault(name, [])) < per_class:
            chosen[name].append((int(label), (float(y), float(x))))
    return {name: cells for name, cells in chosen.items() if len(cells) >= 2}


# ---- the whole flow ---------------------------------------------------------------------------------
def check_umap_selects_cells(viewer, state, qtbot, umap_runner) -> None:
    from qtpy.QtCore import Qt
    from test_umap_widget import logical_point

    from napari_dinoloc.widgets.umap_panel import UmapWidget

    umap = UmapWidget(viewer, runner=umap_runner)
    viewer.window.add_dock_widget(umap, name="Cell UMAP", area="right")
    umap.compute_button.click()
    qtbot.waitUntil(lambda: not umap.busy and umap.points is not None and len(umap.points.get_offsets()) > 0, timeout=120_000)
    labels = [int(label) for label in state.session.table.label]
    assert len(umap.points.get_offsets()) == len(labels)
    umap.canvas.draw()
    # click the point farthest from all others, so that no neighbour can take the click
    xy = umap.layout_xy
    distances = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(xy)) * 1e9
    row = int(np.argmax(distances.min(axis=1)))
    with qtbot.waitSignal(state.selection_changed, timeout=5000) as blocker:
        qtbot.mouseClick(umap.canvas, Qt.MouseButton.LeftButton, pos=logical_point(umap, xy[row]))
    assert blocker.args == [[labels[row]]]
    assert state.selected == [labels[row]]


def test_whole_flow_then_reopen(make_napari_viewer, qtbot, tmp_path, umap_runner):
    viewer, dock = open_dock(make_napari_viewer, qtbot)
    state = dock.state
    assert dock.image_panel.stains() == ["nucleus", "protein"]  # guessed from the layer names

    segment(qtbot, dock)
    cells = find_layer(viewer, CELLS)
    assert cells is not None and len(state.session.table) >= 8
    assert state.annotations.class_names[:2] == ["nucleoplasm", "nucleoli"]  # the sample's classes

    embed(qtbot, dock)
    assert state.session.embeddings.vectors.shape[0] == len(state.session.table)

    # Annotate by clicking: keys pick the class, clicks on the canvas give it to the cell.
    dock.annotate_panel.annotate_button.click()
    with_keys = {n: m for n, m in cells_of_true_class(viewer, state).items() if state.annotations.key_of(n)}
    groups = dict(list(with_keys.items())[:2])
    assert len(groups) == 2, "the field needs two classes with two cells each"
    clicked = {}
    for name, members in groups.items():
        key = state.annotations.key_of(name)
        press_key(viewer, key)
        assert dock.annotate_panel.current_class() == name
        for label, centroid in members:
            click_canvas(viewer, cells.data_to_world(centroid))
            clicked[label] = name
    assert state.annotations.annotations == clicked
    counts = [dock.annotate_panel.table.item(r, 3).text() for r in range(dock.annotate_panel.table.rowCount())]
    assert sorted(int(c) for c in counts if c != "0") == sorted(len(m) for m in groups.values())
    annotated = find_layer(viewer, ANNOTATIONS).data
    some_label, some_name = next(iter(clicked.items()))
    assert annotated[state.session.labels == some_label].max() == state.annotations.class_names.index(some_name) + 1
    # A drag pans and does not annotate; a right-click clears.
    unannotated = next(label for label in state.session.table.label if int(label) not in clicked)
    row = state.session.table.index_of(unannotated)
    drag_canvas(viewer, cells.data_to_world((state.session.table.centroid_y[row], state.session.table.centroid_x[row])))
    assert state.annotations.annotations == clicked
    click_canvas(viewer, cells.data_to_world(members[0][1]), button=2)
    assert members[0][0] not in state.annotations.annotations
    click_canvas(viewer, cells.data_to_world(members[0][1]))
    assert state.annotations.annotations == clicked

    # Train and predict.
    dock.predict_panel.choose("logistic")
    dock.predict_panel.predict_button.click()
    wait_idle(qtbot, dock)
    predictions = state.session.predictions
    assert predictions is not None and set(predictions.class_names) == set(groups)
    check_prediction_layers(viewer, state)
    assert dock.predict_panel.legend.rowCount() == len(predictions.class_names)

    # UMAP of the real embeddings: one point per cell; clicking a point selects its cell.
    check_umap_selects_cells(viewer, state, qtbot, umap_runner)

    # The next cell to annotate is the least certain unannotated one, and the view goes to it.
    dock.annotate_panel.next_button.click()
    open_rows = [i for i, label in enumerate(predictions.labels) if int(label) not in clicked]
    expected = int(predictions.labels[min(open_rows, key=lambda i: predictions.margin[i])])
    assert state.selected == [expected]
    row = state.session.table.index_of(expected)
    assert np.allclose(viewer.camera.center[-2:], (state.session.table.centroid_y[row], state.session.table.centroid_x[row]))

    # Outside annotate mode a click selects a cell (the UMAP dock highlights it); shift-click adds.
    dock.annotate_panel.annotate_button.click()
    first, second = (int(label) for label in state.session.table.label[:2])
    click_canvas(viewer, cells.data_to_world(point_of(state, first)))
    click_canvas(viewer, cells.data_to_world(point_of(state, second)), modifiers=("Shift",))
    assert state.selected == [first, second] and clicked == state.annotations.annotations
    assert set(np.unique(state.session.labels[find_layer(viewer, "selected cells").data > 0])) == {first, second}

    # Export: one row per cell, user_label filled for the clicked cells only.
    path = dock.predict_panel.exports.export_cells_csv(str(tmp_path / "cells.csv"))
    rows = read_table(path)
    assert [int(r["label"]) for r in rows] == [int(label) for label in state.session.table.label]
    assert {int(r["label"]): r["user_label"] for r in rows if r["user_label"]} == clicked
    assert all(r["predicted_class"] in groups for r in rows)
    assert dock.predict_panel.exports.export_annotations_csv(str(tmp_path / "a.csv")).read_text().count("\n") == len(clicked) + 1
    with np.load(dock.predict_panel.exports.export_embeddings_npz(str(tmp_path / "e.npz"))) as saved:
        assert saved["vectors"].shape == state.session.embeddings.vectors.shape
    assert not messages(NotificationSeverity.ERROR)

    # The trained model saved as a bundle predicts the same classes when loaded.
    bundle = dock.predict_panel.exports.save_model(str(tmp_path / "model.dinoloc"))
    dock.predict_panel.choose("bundle", str(bundle))
    dock.predict_panel.predict_button.click()
    wait_idle(qtbot, dock)
    assert state.session.predictions is not predictions
    assert np.array_equal(state.session.predictions.predicted, predictions.predicted)
    assert not messages(NotificationSeverity.ERROR)

    # Close, open the same image in a new viewer: the annotations and the class order come back.
    class_names = state.annotations.class_names
    viewer.close()
    viewer2, dock2 = open_dock(make_napari_viewer, qtbot)
    segment(qtbot, dock2)
    assert dock2.state.annotations.annotations == clicked
    assert dock2.state.annotations.class_names == class_names
    assert find_layer(viewer2, ANNOTATIONS).data.max() > 0

    # Same image, same settings: the embeddings come from the cache.
    reports = []
    dock2.runner._relay.progressed.connect(lambda done, total, what: reports.append(what))
    embed(qtbot, dock2)
    assert "Embeddings loaded from the cache" in reports
    assert np.allclose(dock2.state.session.embeddings.vectors, state.session.embeddings.vectors)


def point_of(state, label):
    """A point inside cell ``label`` (its centroid unless the cell is concave)."""
    from napari_dinoloc.core.annotations import point_inside

    table = state.session.table
    row = table.index_of(label)
    return point_inside(state.session.labels, label, (table.centroid_y[row], table.centroid_x[row]))


def check_prediction_layers(viewer, state):
    session = state.session
    predictions, labels = session.predictions, session.labels
    layer = find_layer(viewer, PREDICTED)
    class_of = dict(zip(predictions.labels.tolist(), (predictions.predicted + 1).tolist()))
    for label in session.table.label:
        values = np.unique(layer.data[labels == label])
        assert values[values > 0].tolist() == [class_of[int(label)]]  # one class per cell (a rim: 0 inside)
    assert set(np.unique(layer.data)) <= set(range(len(predictions.class_names) + 1))
    assert type(layer.colormap).__name__ == "DirectLabelColormap"
    features = find_layer(viewer, CELLS).features
    assert features["label"].tolist() == session.table.label.tolist()
    assert {"predicted_class", "confidence", *(f"prob_{c}" for c in predictions.class_names)} <= set(features.columns)
    # Hovering a cell shows its class and confidence in the status bar.
    cells = find_layer(viewer, CELLS)
    label = int(session.table.label[0])
    inside = point_of(state, label)
    status = cells.get_status(cells.data_to_world(inside), world=True)["coordinates"]
    row = list(predictions.labels).index(label)
    assert f"predicted_class: {predictions.class_names[predictions.predicted[row]]}" in status
    assert "confidence:" in status


# ---- bad input --------------------------------------------------------------------------------------
def test_no_image_layer_says_what_to_do(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    dock = DinolocWidget(viewer)
    viewer.window.add_dock_widget(dock)
    dock.image_panel.segment_button.click()
    dock.model_panel.embed_button.click()
    dock.predict_panel.predict_button.click()
    errors = messages(NotificationSeverity.ERROR)
    assert "no image layer" in errors[0] and "Open Sample" in errors[0]
    assert all("No image yet" in e for e in errors[1:3])
    assert not dock.runner.busy


def test_no_protein_channel(make_napari_viewer, qtbot):
    viewer, dock = open_dock(make_napari_viewer, qtbot)
    dock.image_panel.set_stains(["nucleus", "other"])
    segment(qtbot, dock)
    assert "No channel is marked as the protein" in messages(NotificationSeverity.ERROR)[0]
    assert find_layer(viewer, CELLS) is None and dock.state.session.image is None


def test_weights_file_that_does_not_fit(make_napari_viewer, qtbot, tmp_path):
    viewer, dock = open_dock(make_napari_viewer, qtbot)
    use_truth(dock)
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not a checkpoint" * 10)
    dock.model_panel.choose("checkpoint")
    dock.model_panel.weights.setText(str(bad))
    dock.model_panel.embed_button.click()
    wait_idle(qtbot, dock)
    errors = messages(NotificationSeverity.ERROR)
    assert errors and "weights.pth" in errors[-1] and "Traceback" not in errors[-1]
    assert dock.state.session.embeddings is None and dock.model_panel.embed_button.isEnabled()


class BlockingEmbeddings:
    """Stands in for the engine's embedding: runs until released or cancelled."""

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Event()

    def __call__(self, settings, backbone=None, progress=None, cancel=None):
        from napari_dinoloc.core.errors import Cancelled

        self.started.set()
        while not self.release.wait(0.02):
            if cancel is not None and cancel.cancelled:
                raise Cancelled()
        raise AssertionError("released without a cancel: the test expects a cancel or a close")


def start_blocking_embed(qtbot, dock, monkeypatch):
    blocker = BlockingEmbeddings()
    monkeypatch.setattr(dock.state.session, "compute_embeddings", blocker)
    monkeypatch.setattr(dock.state.session, "get_backbone", lambda *a, **k: None)
    dock.model_panel.embed_button.click()
    qtbot.waitUntil(blocker.started.is_set, timeout=TIMEOUT_MS)
    return blocker


def test_second_run_and_cancel_keep_the_previous_state(make_napari_viewer, qtbot, monkeypatch):
    viewer, dock = open_dock(make_napari_viewer, qtbot)
    use_truth(dock)
    embed(qtbot, dock)
    previous = dock.state.session.embeddings

    blocker = start_blocking_embed(qtbot, dock, monkeypatch)
    dock.model_panel.embed_button.click()     # a second run while one runs
    dock.image_panel.segment_button.click()   # any other job too
    warnings = messages(NotificationSeverity.WARNING)
    assert len(warnings) == 2 and all("still running" in w for w in warnings)

    dock.job_bar.cancel_button.click()
    wait_idle(qtbot, dock)
    blocker.release.set()
    assert dock.state.session.embeddings is previous
    assert any("cancelled" in m for m in messages(NotificationSeverity.INFO))
    assert not messages(NotificationSeverity.ERROR)
    assert "cancelled" in dock.job_bar.status.text() and not dock.job_bar.cancel_button.isEnabled()


def test_closing_the_viewer_mid_run(make_napari_viewer, qtbot, monkeypatch, tmp_path):
    viewer, dock = open_dock(make_napari_viewer, qtbot)
    use_truth(dock)
    runner = dock.runner
    blocker = start_blocking_embed(qtbot, dock, monkeypatch)
    viewer.close()  # napari cancels registered tasks: our token is set, results will be dropped
    assert runner.closed
    qtbot.waitUntil(lambda: not runner.busy, timeout=TIMEOUT_MS)
    blocker.release.set()
    assert not messages(NotificationSeverity.ERROR)
    assert not list((tmp_path / "home").rglob("*.tmp"))  # no half-written file


def test_class_list_editing_is_saved_in_order(make_napari_viewer, qtbot):
    viewer, dock = open_dock(make_napari_viewer, qtbot)
    use_truth(dock)
    panel, store = dock.annotate_panel, dock.state.annotations
    panel.new_name.setText("aggresome")
    panel.add_button.click()
    assert store.class_names[-1] == "aggresome" and panel.current_class() == "aggresome"
    for _ in range(len(store.class_names)):
        panel.up_button.click()
    assert store.class_names[0] == "aggresome" and store.key_of("aggresome") == "1"
    panel.table.item(0, 2).setText("aggresomes")  # an edit in the table renames the class
    assert store.class_names[0] == "aggresomes"
    panel.new_name.setText("aggresomes")
    panel.add_button.click()  # a duplicate is refused with a message, the list is unchanged
    assert "already a class" in messages(NotificationSeverity.ERROR)[-1]
    import json

    saved = json.loads(store.path.read_text())
    assert [c["name"] for c in saved["classes"]] == store.class_names
    panel.remove_button.click()
    assert "aggresomes" not in store.class_names


def test_one_layer_with_a_channel_axis(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    (image, _, _), (truth, truth_kwargs, _) = synthetic_layers(1, shape=(256, 256), n_cells=15)
    viewer.add_image(np.moveaxis(image, 0, -1), name="stack", rgb=False)  # Y, X, C: channels last
    viewer.add_labels(truth, **truth_kwargs)
    dock = DinolocWidget(viewer)
    viewer.window.add_dock_widget(dock)
    panel = dock.image_panel
    assert panel.source.currentText() == "stack" and panel.axis.value() == 2  # the short axis
    assert panel.stains() == ["nucleus", "protein"]
    panel.set_stains(["protein", "nucleus"])  # the user's choice survives a layer change
    viewer.add_points([[1, 1]])
    assert panel.stains() == ["protein", "nucleus"]
    panel.set_stains(["nucleus", "protein"])
    use_truth(dock)
    assert dock.state.session.image.data.shape == (2, 256, 256)
    assert dock.state.session.image.stains == ("nucleus", "protein")
    assert find_layer(viewer, CELLS) is not None


def test_annotations_live_next_to_the_image_file_or_in_a_project_folder(make_napari_viewer, qtbot, tmp_path):
    import tifffile

    (image, _, _), (truth, truth_kwargs, _) = synthetic_layers(1, shape=(256, 256), n_cells=15)
    path = tmp_path / "field.tif"
    tifffile.imwrite(path, image)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari")
    viewer.add_labels(truth, **truth_kwargs)
    dock = DinolocWidget(viewer)
    viewer.window.add_dock_widget(dock)
    assert dock.image_panel.source.currentText() == "field" and dock.image_panel.axis.value() == 0
    use_truth(dock)
    store = dock.state.annotations
    assert store.path == tmp_path / "field.tif.dinoloc.json"
    store.add_class("a")
    dock.state.annotate(int(dock.state.session.table.label[0]), "a")
    assert store.path.exists()

    project = tmp_path / "project"
    project.mkdir()
    dock.state.set_project_folder(project)  # the annotations move along
    moved = dock.state.annotations
    assert moved.path.parent == project and moved.path.exists() and moved.annotations == store.annotations
    assert "field" in dock.annotate_panel.saved_to.text()


def test_new_embeddings_drop_the_classifier_and_a_saved_model_brings_it_back(make_napari_viewer, qtbot, tmp_path):
    viewer, dock = open_dock(make_napari_viewer, qtbot)
    use_truth(dock)
    embed(qtbot, dock)
    state = dock.state
    truth = find_layer(viewer, "ground truth cells").features
    by_class = truth.groupby("true_class")["label"].apply(list)
    for name, labels in [(n, ls) for n, ls in by_class.items() if len(ls) >= 2][:2]:
        for label in labels[:2]:
            state.annotate(int(label), name)
    dock.predict_panel.predict_button.click()
    wait_idle(qtbot, dock)
    assert state.session.predictions is not None
    trained = state.session.predictions.predicted
    bundle = dock.predict_panel.exports.save_model(str(tmp_path / "model"))
    assert bundle.name == "model.dinoloc"

    dock.model_panel.embedding.setCurrentIndex(dock.model_panel.embedding.findData("cls+mean"))  # twice the size
    dock.model_panel.embed_button.click()
    wait_idle(qtbot, dock)
    assert state.session.embeddings.vectors.shape[1] == 128
    assert state.session.predictions is None and find_layer(viewer, PREDICTED) is None

    # The saved model embeds the cells its own way (CLS token) before predicting.
    dock.predict_panel.choose("bundle", str(bundle))
    dock.predict_panel.predict_button.click()
    wait_idle(qtbot, dock)
    assert state.session.embeddings.vectors.shape[1] == 64
    assert dock.model_panel.embedding.currentData() == "cls"  # the Model step shows what made them
    assert np.array_equal(state.session.predictions.predicted, trained)
    assert find_layer(viewer, PREDICTED) is not None
    assert not messages(NotificationSeverity.ERROR)


def test_a_file_that_is_not_a_model(make_napari_viewer, qtbot, tmp_path):
    viewer, dock = open_dock(make_napari_viewer, qtbot)
    use_truth(dock)
    bad = tmp_path / "model.dinoloc"
    bad.write_bytes(b"\x00" * 64)
    dock.predict_panel.choose("bundle", str(bad))
    dock.predict_panel.predict_button.click()
    wait_idle(qtbot, dock)
    errors = messages(NotificationSeverity.ERROR)
    assert errors and "model.dinoloc" in errors[-1] and dock.state.session.predictions is None
    dock.predict_panel.exports.save_model(str(tmp_path / "none.dinoloc"))  # nothing trained yet
    assert "no trained model" in messages(NotificationSeverity.ERROR)[-1]
    assert not (tmp_path / "none.dinoloc").exists()


def test_the_model_step_starts_on_the_default_features(make_napari_viewer, qtbot):
    from napari_dinoloc.core import defaults

    viewer, dock = open_dock(make_napari_viewer, qtbot)
    assert dock.model_panel.backbone.currentData() == defaults.FEATURES
    assert dock.model_panel.backbone.findData("classic") >= 0  # the classic features stay a choice
