"""The Cell UMAP dock: points per cell, selection linked both ways, recolouring, responsiveness."""

from __future__ import annotations

import time

import torch  # noqa: F401 - torch before Qt
import numpy as np
import pytest

from napari_dinoloc.core.annotations import AnnotationStore
from napari_dinoloc.core.embedding import Embeddings
from napari_dinoloc.core.heads import Predictions

pytestmark = pytest.mark.gui

CELLS = np.arange(11, 23)  # labels differ from row numbers on purpose
CLASSES = ("nucleoli", "cytoplasm", "golgi")


@pytest.fixture
def runner(umap_runner):
    return umap_runner


@pytest.fixture
def dock(make_napari_viewer, qtbot, runner):
    from napari_dinoloc.widgets._state import state_for_viewer
    from napari_dinoloc.widgets.umap_panel import UmapWidget

    viewer = make_napari_viewer(show=True)
    state = state_for_viewer(viewer)
    fill_state(state)
    widget = UmapWidget(viewer, runner=runner)
    viewer.window.add_dock_widget(widget, name="Cell UMAP", area="right")
    widget.show_layout(CELLS, grid_layout(len(CELLS)))
    widget.canvas.draw()
    return widget


def fill_state(state) -> None:
    rng = np.random.default_rng(0)
    truth = np.arange(len(CELLS)) % len(CLASSES)
    vectors = (np.eye(len(CLASSES), 16)[truth] * 3 + rng.normal(size=(len(CELLS), 16))).astype(np.float32)
    state.session.embeddings = Embeddings(CELLS.copy(), vectors, {"backbone": "test"})
    probabilities = np.full((len(CELLS), len(CLASSES)), 0.1, dtype=np.float32)
    probabilities[np.arange(len(CELLS)), truth] = 0.8
    state.session.predictions = Predictions(CELLS.copy(), CLASSES, probabilities)
    store = AnnotationStore(path=None)
    for name in CLASSES:
        store.add_class(name)
    store.annotate(int(CELLS[0]), "golgi", (0, 0))
    store.annotate(int(CELLS[1]), "golgi", (0, 0))
    state.annotations = store


def grid_layout(n: int) -> np.ndarray:
    """Points on a grid, far apart, so each click has one clear target."""
    return np.array([(i % 4, i // 4) for i in range(n)], dtype=np.float32) * 10


def logical_point(widget, xy):
    """Qt widget coordinates of a data point of the plot."""
    from qtpy.QtCore import QPoint

    x, y = widget.ax.transData.transform(xy)
    ratio = widget.canvas.device_pixel_ratio
    return QPoint(int(round(x / ratio)), int(round((widget.canvas.figure.bbox.height - y) / ratio)))


def test_one_point_per_cell(dock):
    assert len(dock.points.get_offsets()) == len(CELLS)
    assert dock.ax.get_title() == f"UMAP of {len(CELLS)} cells"


def test_clicking_a_point_selects_its_cell(dock, qtbot):
    from qtpy.QtCore import Qt

    row = 5
    with qtbot.waitSignal(dock.state.selection_changed, timeout=2000) as blocker:
        qtbot.mouseClick(dock.canvas, Qt.MouseButton.LeftButton, pos=logical_point(dock, dock.layout_xy[row]))
    assert blocker.args == [[int(CELLS[row])]]
    assert dock.highlighted_labels() == [int(CELLS[row])]


def test_viewer_selection_rings_the_point(dock):
    dock.state.select_cells([int(CELLS[7]), int(CELLS[2])])
    assert sorted(dock.highlighted_labels()) == sorted([int(CELLS[7]), int(CELLS[2])])
    np.testing.assert_allclose(np.sort(dock.ring.get_offsets(), axis=0), np.sort(dock.layout_xy[[2, 7]], axis=0))


def test_lasso_selects_the_points_inside(dock, qtbot):
    from qtpy.QtCore import Qt

    # The first row of the grid (y = 0): rows 0..3.
    corners = [(-1, -1), (31, -1), (31, 4), (-1, 4), (-1, -0.5)]
    points = [logical_point(dock, corner) for corner in corners]
    qtbot.mousePress(dock.canvas, Qt.MouseButton.LeftButton, pos=points[0])
    for point in points[1:]:
        drag_to(dock.canvas, point)
    qtbot.mouseRelease(dock.canvas, Qt.MouseButton.LeftButton, pos=points[-1])
    assert sorted(dock.state.selected) == CELLS[:4].tolist()


def drag_to(canvas, point) -> None:
    """A mouse move with the left button held (QTest cannot hold a button while moving)."""
    from qtpy.QtCore import QEvent, QPointF, Qt
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    local = QPointF(point)
    event = QMouseEvent(QEvent.Type.MouseMove, local, QPointF(canvas.mapToGlobal(point)), Qt.MouseButton.NoButton,
                        Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(canvas, event)


def test_recolour_by_annotation_keeps_the_layout(dock):
    layout_before = dock.layout_xy.copy()
    dock.colour_by.setCurrentText("annotation")
    legend = [text.get_text() for text in dock.figure.legends[0].get_texts()]
    assert legend == ["golgi (2)", f"not annotated ({len(CELLS) - 2})"]
    golgi = dock.state.annotations.colour_of("golgi")
    assert colour_of_point(dock, 0) == golgi and colour_of_point(dock, 1) == golgi
    dock.state.annotations.annotate(int(CELLS[3]), "nucleoli", (0, 0))
    dock.state.annotations_changed.emit()
    assert colour_of_point(dock, 3) == dock.state.annotations.colour_of("nucleoli")
    np.testing.assert_array_equal(dock.layout_xy, layout_before)


def colour_of_point(dock, row: int) -> str:
    """Hex colour of the point of layout row ``row`` (points are drawn in a sorted order)."""
    from matplotlib.colors import to_hex

    offsets = np.asarray(dock.points.get_offsets())
    drawn = int(np.flatnonzero(np.all(offsets == dock.layout_xy[row], axis=1))[0])
    return to_hex(dock.points.get_facecolors()[drawn])


def test_new_embeddings_of_other_cells_clear_the_plot(dock):
    old = dock.state.session.embeddings
    dock.state.session.embeddings = Embeddings(old.labels[:-1].copy(), old.vectors[:-1].copy(), old.signature)
    dock.state.embeddings_changed.emit()
    assert len(dock.points.get_offsets()) == 0
    assert dock.figure.legends == []
    dock.state.session.embeddings = None  # cells cleared (a new image or segmentation)
    dock.show_layout(CELLS, grid_layout(len(CELLS)))
    dock.state.embeddings_changed.emit()
    assert len(dock.points.get_offsets()) == 0


def test_new_embeddings_of_the_same_cells_keep_the_plot_while_it_updates(dock, qtbot, runner):
    """A re-embed (another model) keeps the old layout, marked updating, and lays the cells out again."""
    from napari_dinoloc.widgets.umap_panel import UPDATING

    runner.warm_up().result(timeout=120)
    old = dock.state.session.embeddings
    order = np.arange(len(CELLS))[::-1]  # the same cells in another order
    vectors = np.random.default_rng(1).normal(size=(len(CELLS), 8)).astype(np.float32)
    dock.state.session.embeddings = Embeddings(old.labels[order].copy(), vectors, {"backbone": "other"})
    dock.state.embeddings_changed.emit()
    assert len(dock.points.get_offsets()) == len(CELLS)  # the old plot stays
    assert np.array_equal(dock.layout_xy, grid_layout(len(CELLS)))
    assert dock.ax.get_title().endswith(UPDATING) and dock.busy
    qtbot.waitUntil(lambda: not dock.busy and not dock.pending, timeout=60_000)
    assert UPDATING not in dock.ax.get_title()
    assert list(dock.cell_labels) == list(CELLS[order])
    assert len(dock.points.get_offsets()) == len(CELLS) and not np.array_equal(dock.layout_xy, grid_layout(len(CELLS)))
    assert np.isfinite(dock.layout_xy).all()


def test_compute_umap_keeps_the_event_loop_responsive(dock, qtbot, runner):
    """The event loop's longest gap (10 ms QTimer) while UMAP runs stays under 1 s."""
    from qtpy.QtCore import QTimer

    runner.warm_up().result(timeout=120)
    gaps, last = [], [time.perf_counter()]

    def tick():
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(10)
    dock.show_layout(CELLS[:0], np.zeros((0, 2)))
    assert dock.compute()
    qtbot.waitUntil(lambda: not dock.busy, timeout=60_000)
    timer.stop()
    assert len(dock.points.get_offsets()) == len(CELLS)
    assert np.isfinite(dock.layout_xy).all()
    assert max(gaps) < 1.0, f"the event loop was blocked for {max(gaps):.2f} s"


def test_compute_without_embeddings_warns(dock, monkeypatch):
    from napari_dinoloc.widgets import umap_panel

    warnings = []
    monkeypatch.setattr(umap_panel, "notify_warning", warnings.append)
    dock.state.session.embeddings = None
    assert not dock.compute()
    assert "embed the cells" in warnings[0]


def test_closing_the_viewer_stops_the_worker_process(make_napari_viewer, qtbot):
    from napari_dinoloc.widgets.umap_panel import UmapWidget

    viewer = make_napari_viewer()
    widget = UmapWidget(viewer)  # owns its runner and starts warming it up
    viewer.window.add_dock_widget(widget, name="Cell UMAP")
    runner = widget.umap_runner
    qtbot.waitUntil(lambda: runner.worker_pid is not None, timeout=10_000)
    process = runner._worker.process
    viewer.close()
    qtbot.waitUntil(lambda: process.poll() is not None, timeout=5_000)


def test_shift_click_adds_to_the_selection(dock, qtbot):
    from qtpy.QtCore import Qt

    dock.state.select_cells([int(CELLS[0])])
    qtbot.mouseClick(dock.canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ShiftModifier,
                     pos=logical_point(dock, dock.layout_xy[6]))
    assert dock.state.selected == [int(CELLS[0]), int(CELLS[6])]
