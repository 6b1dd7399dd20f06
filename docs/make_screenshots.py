"""Screenshots of every dock for the docs (docs/images/), in a 1600 x 1000 window, dark theme.

Run: xvfb-run -a -s "-screen 0 1700x1100x24" .venv/bin/python docs/make_screenshots.py [NAME.png ...]
(names: only those are written; the screen must be larger than the window).

- 01..08: the main dock at each step on the synthetic sample with the tiny random backbone (no
  download); the annotations are taken from the sample's ground truth, as a user would click them.
- umap.png, 10-gallery.png: the Cell UMAP and Cell gallery docks on the same cells after step 4.
- 11-hpa-rims.png, 09-patch-map.png: the real HPA field (../shared/data/hpa_fov_4ch, or the folder in
  $DINOLOC_HPA_FIELD) opened with the plugin's reader, segmented with the cell stain, a few cells
  annotated, predicted with the default features; then its patch feature map. Skipped when absent.
Each dock is shown alone while it is photographed, so the pictures do not depend on how the docks
are arranged (side by side or as tabs).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch  # noqa: F401  (torch and timm before Qt)
import timm  # noqa: F401

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"
HPA_FIELD = Path(os.environ.get("DINOLOC_HPA_FIELD", HERE.parents[1] / "shared" / "data" / "hpa_fov_4ch"))
WINDOW_SIZE = (1600, 1000)
DOCK_WIDTH = 560  # the main dock: wide enough for the report's tables
CELLS_PER_CLASS = 3
FINETUNE_EPOCHS = 8
FINETUNE_LR = 1e-4  # the default, for pretrained weights; random-tiny learns little either way
ADAPT_MINUTES = 1.0  # step 7: a short DINO run (real use: tens of minutes to hours)
ONLY = set(sys.argv[1:])  # screenshots to write; empty: all


def wanted(*names: str) -> bool:
    return not ONLY or bool(ONLY & set(names))


def settle(app, until=lambda: True, seconds: float = 600.0) -> None:
    """Process events until ``until()`` holds (or ``seconds`` pass), then let the window repaint."""
    end = time.perf_counter() + seconds
    while not until() and time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.02)
    for _ in range(10):
        app.processEvents()
        time.sleep(0.05)


def wait_until_idle(dock, app) -> None:
    settle(app, lambda: not dock.runner.busy)


def new_viewer(title: str):
    import napari

    viewer = napari.Viewer(show=True, title=title)
    viewer.theme = "dark"  # the docs show napari's default theme; the plots and the report follow it
    viewer.window._qt_window.resize(*WINDOW_SIZE)
    return viewer


def add_dock(viewer, widget, name: str, width: int = 0):
    """Add ``widget`` as a dock on the right; ``width``: its width in pixels (0: its own)."""
    from qtpy.QtCore import Qt

    dock_widget = viewer.window.add_dock_widget(widget, name=name, area="right")
    if width:
        viewer.window._qt_window.resizeDocks([dock_widget], [width], Qt.Orientation.Horizontal)
    return dock_widget


def show_only(viewer, dock_widget, width: int = 0) -> None:
    """The dock to photograph alone on the right, whether the docks are side by side or tabbed;
    ``width``: its width in pixels again (a dock shown again comes back narrower)."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QDockWidget

    window = viewer.window._qt_window
    for other in window.findChildren(QDockWidget):
        if window.dockWidgetArea(other) == window.dockWidgetArea(dock_widget) and other is not dock_widget:
            other.hide()
    dock_widget.show()
    dock_widget.raise_()
    if width:
        window.resizeDocks([dock_widget], [width], Qt.Orientation.Horizontal)


def save(viewer, app, name: str) -> None:
    if not wanted(name):
        return
    settle(app)
    path = IMAGES / name
    viewer.screenshot(str(path), canvas_only=False)
    print("wrote", path, "size", viewer.window._qt_window.size().width(), "x", viewer.window._qt_window.size().height())
    dismiss_notifications()  # the next picture shows only the messages of its own step


def dismiss_notifications() -> None:
    try:
        from napari._qt.dialogs.qt_notification import NapariQtNotification
    except ImportError:  # another napari: the messages stay, which is only untidy
        return
    for toast in list(NapariQtNotification._instances):
        toast.close()


def annotate_from_truth(viewer, dock) -> None:
    """Click a few cells of each true class, the way a user would."""
    from napari_dinoloc.widgets._layers import CELLS, find_layer

    state, cells = dock.state, find_layer(viewer, CELLS)
    truth = find_layer(viewer, "ground truth cells")
    true_class = dict(zip(truth.features["label"], truth.features["true_class"]))
    table, done = state.session.table, {}
    for y, x in zip(table.centroid_y, table.centroid_x):
        name = true_class.get(int(truth.data[int(round(y)), int(round(x))]))
        if name and done.get(name, 0) < CELLS_PER_CLASS and state.annotations.key_of(name):
            dock.annotate_panel.pick_key(state.annotations.key_of(name))
            dock.annotate_panel.clicker.click(cells.data_to_world((y, x)))
            done[name] = done.get(name, 0) + 1


def hover_a_cell(viewer, dock) -> None:
    """Put the cursor on a cell so the status bar shows its predicted class and confidence."""
    from napari_dinoloc.widgets._layers import CELLS, find_layer

    table, cells = dock.state.session.table, find_layer(viewer, CELLS)
    row = len(table) // 2
    viewer.cursor.position = tuple(cells.data_to_world((table.centroid_y[row], table.centroid_x[row])))
    viewer.update_status_from_cursor()


def main() -> None:
    os.environ.setdefault("NAPARI_DINOLOC_HOME", tempfile.mkdtemp(prefix="dinoloc-shots-"))
    os.environ.setdefault("DINOLOC_CACHE_DIR", tempfile.mkdtemp(prefix="dinoloc-cache-"))
    IMAGES.mkdir(exist_ok=True)
    # napari's workers route warnings to their signals; after the last viewer those are gone, and a
    # warning at exit (a temporary folder cleaned up late) would print a traceback
    showwarning = warnings.showwarning
    if wanted("01-channels.png", "02-cells.png", "03-embedded.png", "04-annotate.png", "05-predicted.png",
              "umap.png", "10-gallery.png", "06-finetune.png", "07-report.png", "08-adapt.png"):
        synthetic_steps()
    if wanted("11-hpa-rims.png", "09-patch-map.png"):
        hpa_field()
    warnings.showwarning = showwarning


def synthetic_steps() -> None:
    from qtpy.QtWidgets import QApplication

    from napari_dinoloc.widgets.dock import DinolocWidget

    viewer = new_viewer("napari-dinoloc")
    viewer.open_sample("napari-dinoloc", "synthetic")
    dock = DinolocWidget(viewer)
    dock_widget = add_dock(viewer, dock, "DINO localization", DOCK_WIDTH)
    app = QApplication.instance()
    settle(app)
    viewer.reset_view()  # the field fits the canvas left beside the dock
    save(viewer, app, "01-channels.png")

    dock.image_panel.segment()
    wait_until_idle(dock, app)
    save(viewer, app, "02-cells.png")

    dock.model_panel.choose("random-tiny", input_size=32, crop_size=64)
    dock.model_panel.embed()
    wait_until_idle(dock, app)
    dock.show_step(1)
    save(viewer, app, "03-embedded.png")

    dock.annotate_panel.annotate_button.setChecked(True)
    annotate_from_truth(viewer, dock)
    dock.show_step(2)
    save(viewer, app, "04-annotate.png")

    dock.predict_panel.choose("logistic")
    dock.predict_panel.predict()
    wait_until_idle(dock, app)
    dock.annotate_panel.annotate_button.setChecked(False)
    dock.show_step(3)
    hover_a_cell(viewer, dock)
    save(viewer, app, "05-predicted.png")

    if wanted("umap.png"):
        umap_dock(viewer, app)
    if wanted("10-gallery.png"):
        gallery_dock(viewer, app)
    show_only(viewer, dock_widget, DOCK_WIDTH)
    viewer.reset_view()
    if wanted("06-finetune.png", "07-report.png"):
        finetune_and_report(viewer, dock, app)
    if wanted("08-adapt.png"):
        adapt_the_model(viewer, dock, app)
    viewer.close()


def umap_dock(viewer, app) -> None:
    """The Cell UMAP of the predicted cells, coloured by predicted class, one cell selected."""
    from napari_dinoloc.widgets.umap_panel import UmapWidget

    umap = UmapWidget(viewer)
    show_only(viewer, add_dock(viewer, umap, "Cell UMAP", 520))
    umap.compute()
    settle(app, lambda: not umap.busy and len(umap.cell_labels) > 0)
    umap._select([int(umap.cell_labels[0])])
    save(viewer, app, "umap.png")


def gallery_dock(viewer, app) -> None:
    """All cells, least certain first, in colour; one thumbnail clicked: the viewer centres on it."""
    from napari_dinoloc.widgets.gallery_panel import GalleryWidget

    gallery = GalleryWidget(viewer)
    show_only(viewer, add_dock(viewer, gallery, "Cell gallery", 520))
    gallery.show_combo.setCurrentIndex(0)  # all cells: a full page
    gallery.sort_combo.setCurrentIndex(1)  # least certain first
    gallery.view_combo.setCurrentIndex(1)  # every stain in colour
    settle(app, lambda: gallery.loaded, seconds=120)
    first = gallery.shown_labels[0]
    gallery.grid.select_labels([first])
    gallery.on_cell_clicked(first)
    save(viewer, app, "10-gallery.png")


def finetune_and_report(viewer, dock, app) -> None:
    """Step 5 with its live plot after a run, then step 6 comparing frozen and fine-tuned."""
    dock.finetune_panel.choose("last-blocks", blocks=1, epochs=FINETUNE_EPOCHS, lr=FINETUNE_LR)
    dock.finetune_panel.start()
    wait_until_idle(dock, app)
    scroll_to_step(dock, app, 4)
    save(viewer, app, "06-finetune.png")

    dock.finetune_panel.choose("last-blocks", blocks=1, epochs=3, lr=FINETUNE_LR)  # one run per fold: keep it short
    dock.report_panel.folds.setValue(3)
    dock.report_panel.compare.setChecked(True)
    dock.report_panel.evaluate()
    wait_until_idle(dock, app)
    scroll_to_step(dock, app, 5)
    save(viewer, app, "07-report.png")


def adapt_the_model(viewer, dock, app) -> None:
    """Step 7 after a short self-supervised run: loss curve, kNN macro-F1 at each checkpoint, new backbone."""
    from napari_dinoloc.core.backbones import CELL_MODEL
    from napari_dinoloc.core.backbones._loading import packaged_weights
    from napari_dinoloc.core.errors import DinolocError

    try:
        packaged_weights(CELL_MODEL)
        start = "shipped"
    except DinolocError:  # the shipped weights are not in this checkout yet
        start = "scratch"
    dock.pretrain_panel.choose(minutes=ADAPT_MINUTES, start=start)
    dock.pretrain_panel.start()
    wait_until_idle(dock, app)
    scroll_to_step(dock, app, 6)
    save(viewer, app, "08-adapt.png")


def scroll_to_step(dock, app, index: int) -> None:
    """Step ``index`` at the top of the dock, once its new content (plot title, pictures) is laid out."""
    settle(app)
    dock.scroll.verticalScrollBar().setValue(dock.sections[index].y())


# ---- the real HPA field ------------------------------------------------------------------------------
def hpa_field() -> None:
    """Rims of the predicted classes on a real HPA field, then its patch feature map."""
    from qtpy.QtWidgets import QApplication

    from napari_dinoloc._reader import get_reader
    from napari_dinoloc.core import defaults
    from napari_dinoloc.widgets.dock import DinolocWidget

    files = sorted(str(path) for path in HPA_FIELD.glob("*_*.png"))
    read = get_reader(files) if files else None
    if read is None:
        print(f"skipped the HPA field: no HPA stain files in {HPA_FIELD}")
        return
    viewer = new_viewer("napari-dinoloc: HPA field")
    for data, kwargs, _kind in read(files):
        viewer.add_image(data, **kwargs)
    dock = DinolocWidget(viewer)
    dock_widget = add_dock(viewer, dock, "DINO localization", DOCK_WIDTH)
    show_only(viewer, dock_widget)
    app = QApplication.instance()
    dock.image_panel.refresh()
    dock.image_panel.cell_stain.setCurrentText("microtubules")
    dock.image_panel.segment()
    wait_until_idle(dock, app)
    dock.model_panel.choose(defaults.FEATURES)
    dock.model_panel.embed()
    wait_until_idle(dock, app)
    annotate_by_protein(viewer, dock)
    dock.predict_panel.choose(defaults.HEAD)
    dock.predict_panel.predict()
    wait_until_idle(dock, app)
    dock.annotate_panel.annotate_button.setChecked(False)
    for layer in viewer.layers:
        if layer.name.endswith((" microtubules", " ER")):
            layer.visible = False  # protein and nucleus under the rims, as a user checks them
    zoom_on_cells(viewer, dock, 1.6)
    dock.show_step(3)
    hover_a_cell(viewer, dock)
    save(viewer, app, "11-hpa-rims.png")

    if wanted("09-patch-map.png"):
        dock.model_panel.choose(defaults.FEATURES, crop_size=256)
        viewer.reset_view()
        settle(app)
        dock.patch_map_panel.show_pca()
        wait_until_idle(dock, app)
        dock.show_step(7)
        save(viewer, app, "09-patch-map.png")
    viewer.close()


def zoom_on_cells(viewer, dock, factor: float) -> None:
    """Centre the view on the cells, ``factor`` times closer than the whole field: rims a few screen pixels wide."""
    table = dock.state.session.table
    viewer.reset_view()
    viewer.camera.center = (float(np.median(table.centroid_y)), float(np.median(table.centroid_x)))
    viewer.camera.zoom = viewer.camera.zoom * factor


def annotate_by_protein(viewer, dock, per_class: int = 3) -> None:
    """Click a few cells as a user would: where the protein is mostly in the nucleus, 'nucleoplasm';
    mostly outside it, 'cytoplasm' (the share of protein inside the nucleus, measured per cell)."""
    from napari_dinoloc.core.stains import NUCLEUS, PROTEIN
    from napari_dinoloc.widgets._layers import CELLS, find_layer

    state, cells = dock.state, find_layer(viewer, CELLS)
    image, labels, table = state.session.image, state.session.labels, state.session.table
    protein, nucleus = image.data[image.stains.index(PROTEIN)], image.data[image.stains.index(NUCLEUS)]
    in_nucleus = nucleus > np.percentile(nucleus[labels > 0], 50)
    shares = []
    for label in table.label:
        cell = labels == label
        total = float(protein[cell].sum()) or 1.0
        shares.append(float(protein[cell & in_nucleus].sum()) / total)
    order = np.argsort(shares)
    picks = {"cytoplasm": order[:per_class], "nucleoplasm": order[::-1][:per_class]}
    for name in picks:
        if name not in state.annotations.class_names:  # a new image starts without classes: add them
            state.edit_classes(state.annotations.add_class, name)
    dock.annotate_panel.annotate_button.setChecked(True)
    for name, rows in picks.items():
        dock.annotate_panel.pick_key(state.annotations.key_of(name))
        for row in rows:
            dock.annotate_panel.clicker.click(cells.data_to_world((table.centroid_y[row], table.centroid_x[row])))


if __name__ == "__main__":
    sys.exit(main())
