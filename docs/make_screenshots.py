"""Screenshots of the main dock at each step, for the docs (docs/images/).

Run: xvfb-run -a .venv/bin/python docs/make_screenshots.py [NAME.png ...]   (names: only those are written)
Uses the synthetic sample and the tiny random backbone (no download); the annotations are
taken from the sample's ground truth, as a user would click them.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch  # noqa: F401  (torch and timm before Qt)
import timm  # noqa: F401

IMAGES = Path(__file__).resolve().parent / "images"
WINDOW_SIZE = (1500, 950)
CELLS_PER_CLASS = 3
FINETUNE_EPOCHS = 8
FINETUNE_LR = 1e-4  # the default, for pretrained weights; random-tiny learns little either way
ADAPT_MINUTES = 1.0  # step 7: a short DINO run (real use: tens of minutes to hours)
ONLY = set(sys.argv[1:])  # screenshots to write; empty: all


def wait_until_idle(dock, app) -> None:
    while dock.runner.busy:
        app.processEvents()
        time.sleep(0.02)
    app.processEvents()


def save(viewer, app, name: str) -> None:
    if ONLY and name not in ONLY:
        return
    for _ in range(5):
        app.processEvents()
        time.sleep(0.05)
    viewer.screenshot(str(IMAGES / name), canvas_only=False)
    print("wrote", IMAGES / name)


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
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_dinoloc.widgets.dock import DinolocWidget

    IMAGES.mkdir(exist_ok=True)
    viewer = napari.Viewer(show=True, title="napari-dinoloc")
    viewer.window._qt_window.resize(*WINDOW_SIZE)
    viewer.open_sample("napari-dinoloc", "synthetic")
    dock = DinolocWidget(viewer)
    viewer.window.add_dock_widget(dock, name="DINO localization", area="right")
    app = QApplication.instance()
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

    if not ONLY or ONLY & {"06-finetune.png", "07-report.png"}:
        finetune_and_report(viewer, dock, app)
    adapt_the_model(viewer, dock, app)
    viewer.close()


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
    for _ in range(5):
        app.processEvents()
        time.sleep(0.05)
    dock.scroll.verticalScrollBar().setValue(dock.sections[index].y())


if __name__ == "__main__":
    sys.exit(main())
