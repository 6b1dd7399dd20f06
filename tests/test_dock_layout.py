"""The plugin's docks open as tabs of one dock area, each with the window's height (1600 x 1000)."""

from __future__ import annotations

import torch  # noqa: F401  (torch before Qt: see napari_dinoloc.widgets._workers)
import pytest
from qtpy.QtWidgets import QDockWidget, QWidget

pytestmark = pytest.mark.gui
WIDTH, HEIGHT = 1600, 1000
USEFUL = 0.7  # a dock shows at least this share of the window's height (stacked, each had about a third)


def dock_of(viewer, name_part: str) -> QDockWidget:
    name = next(n for n in viewer.window.dock_widgets if name_part in n)
    dock = viewer.window.dock_widgets[name].parentWidget()
    assert isinstance(dock, QDockWidget)
    return dock


def in_front(dock: QDockWidget) -> bool:
    """The tab the user sees (Qt moves the other tabs out of sight rather than hiding them)."""
    return dock.isVisible() and not dock.visibleRegion().isEmpty()


def sized_window(dock: QDockWidget, qtbot):
    window = dock.parentWidget()
    window.showNormal()
    window.resize(WIDTH, HEIGHT)
    qtbot.waitUntil(lambda: window.height() == HEIGHT and window.width() == WIDTH, timeout=5000)
    qtbot.wait(50)
    return window


def wait_for_workers(qtbot):
    from qtpy.QtCore import QThreadPool

    # let the docks' short start-up workers (device lookup) end before their signals go away
    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=30000)


def test_launch_opens_the_docks_as_tabs_each_with_the_full_height(make_napari_viewer, qtbot):
    # make_napari_viewer (unused) gives this test napari's test app: a second direct Viewer in the run
    # (test_manifest's main job) would otherwise register the plugin's commands twice.
    from napari_dinoloc.launch import open_viewer_with_sample

    viewer = open_viewer_with_sample(run=False)
    try:
        main, umap = dock_of(viewer, "DINO localization"), dock_of(viewer, "Cell UMAP")
        window = sized_window(main, qtbot)
        assert umap in window.tabifiedDockWidgets(main)
        assert in_front(main) and not in_front(umap)  # the user starts at step 1
        assert main.height() >= USEFUL * HEIGHT, main.height()
        steps = main.widget().scroll.viewport()
        assert steps.height() >= USEFUL * HEIGHT - 60  # the steps, not a third of them
        umap.raise_()
        qtbot.waitUntil(lambda: in_front(umap), timeout=5000)
        assert umap.height() >= USEFUL * HEIGHT
        canvas = umap.widget().canvas
        assert canvas.height() >= canvas.minimumHeight()
    finally:
        wait_for_workers(qtbot)
        viewer.close()


def test_any_plugin_dock_opened_later_joins_the_tabs(make_napari_viewer, qtbot):
    """Opened one by one (the Plugins menu asks napari for no tabs): each joins as a tab and comes
    to the front; a dock of another plugin does not."""
    from napari_dinoloc.widgets.dock import DinolocWidget
    from napari_dinoloc.widgets.umap_panel import UmapWidget

    viewer = make_napari_viewer(show=True)
    main_widget = DinolocWidget(viewer)
    viewer.window.add_dock_widget(main_widget, name="DINO localization (napari-dinoloc)")
    umap_widget = UmapWidget(viewer)
    viewer.window.add_dock_widget(umap_widget, name="Cell UMAP (napari-dinoloc)")
    main, umap = main_widget.parentWidget(), umap_widget.parentWidget()
    window = sized_window(main, qtbot)
    qtbot.waitUntil(lambda: umap in window.tabifiedDockWidgets(main), timeout=5000)
    assert in_front(umap) and umap.height() >= USEFUL * HEIGHT

    # A dock this plugin adds later (e.g. a cell gallery) joins without doing anything itself.
    gallery_type = type("GalleryLike", (QWidget,), {"__module__": "napari_dinoloc.widgets.gallery_like"})
    gallery_widget = gallery_type()
    viewer.window.add_dock_widget(gallery_widget, name="Cell gallery (napari-dinoloc)")
    gallery = gallery_widget.parentWidget()
    qtbot.waitUntil(lambda: gallery in window.tabifiedDockWidgets(main), timeout=5000)
    qtbot.waitUntil(lambda: in_front(gallery), timeout=5000)
    assert not in_front(main) and not in_front(umap)

    other_widget = QWidget()
    viewer.window.add_dock_widget(other_widget, name="another plugin")
    qtbot.wait(50)
    assert other_widget.parentWidget() not in window.tabifiedDockWidgets(main)
    wait_for_workers(qtbot)


def test_the_main_dock_content_fits_its_width(make_napari_viewer, qtbot):
    """At 1600 x 1000 with the sample, nothing in the main dock is cut at the right or left (no control
    hidden past the edge, nothing scrolled sideways): every visible widget lies within the viewport."""
    from qtpy.QtCore import QPoint

    from napari_dinoloc.launch import open_viewer_with_sample

    viewer = open_viewer_with_sample(run=False)
    try:
        main = dock_of(viewer, "DINO localization")
        sized_window(main, qtbot)
        scroll = main.widget().scroll
        viewport, content = scroll.viewport(), scroll.widget()
        qtbot.wait(200)
        outside = []
        for child in content.findChildren(QWidget):
            if not child.isVisibleTo(content) or child.width() == 0:
                continue
            left = child.mapTo(viewport, QPoint(0, 0)).x()
            if left < 0 or left + child.width() > viewport.width():
                outside.append((type(child).__name__, getattr(child, "text", lambda: "")(), left, child.width()))
        assert content.width() <= viewport.width(), (content.width(), viewport.width())
        assert not outside, (viewport.width(), outside[:10])
    finally:
        wait_for_workers(qtbot)
        viewer.close()
