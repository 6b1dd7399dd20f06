"""The Cell gallery screenshot for the docs (docs/images/10-gallery.png) on the synthetic sample.

The shipped cell model embeds the cells, a logistic head is trained on 30 % of them (ground-truth
classes, as `dinoloc demo` does), then the gallery fetches the next cells to annotate and one
thumbnail is clicked, so the viewer is centred on that cell.

Run: xvfb-run -a .venv/bin/python docs/make_gallery_screenshot.py
"""

from __future__ import annotations

import time
from pathlib import Path

import torch  # noqa: F401  (torch and timm before Qt)
import timm  # noqa: F401

OUT = Path(__file__).resolve().parent / "images" / "10-gallery.png"


def settle(app, until=lambda: True, seconds: float = 60.0) -> None:
    end = time.perf_counter() + seconds
    while not until() and time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.02)
    for _ in range(10):
        app.processEvents()
        time.sleep(0.05)


def main() -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_dinoloc.core import defaults
    from napari_dinoloc.core.demo import choose_annotated, ground_truth_classes, load_demo_backbone
    from napari_dinoloc.core.embedding import EmbedSettings
    from napari_dinoloc.core.images import make_cell_image
    from napari_dinoloc.core.synthetic import make_field
    from napari_dinoloc.widgets._state import state_for_viewer
    from napari_dinoloc.widgets.gallery_panel import GalleryWidget

    field = make_field(seed=0, shape=(768, 768))
    viewer = napari.Viewer(show=True, title="napari-dinoloc: cell gallery")
    viewer.window._qt_window.resize(1400, 900)
    for channel, stain, colour in zip(field.image, field.stains, ("blue", "green")):
        viewer.add_image(channel, name=stain, colormap=colour, blending="additive")
    gallery = GalleryWidget(viewer)
    viewer.window.add_dock_widget(gallery, name="Cell gallery", area="right")
    app = QApplication.instance()
    state = state_for_viewer(viewer)
    state.use_image(make_cell_image(field.image, field.stains, "synthetic_sample"), None, list(field.stains),
                    list(field.class_names))
    state.use_labels(field.labels)
    session = state.session
    session.set_backbone(load_demo_backbone(None, print))
    state.use_embeddings(session.backbone, session.compute_embeddings(EmbedSettings()))
    truth = ground_truth_classes(session.labels, field.labels, field.cell_class)
    for label, name in choose_annotated(truth, 0.3).items():
        state.annotate(label, name)
    state.use_head(session.train_head(defaults.HEAD, state.annotations.annotations))
    viewer.reset_view()
    gallery.fetch_next_cells()
    settle(app, lambda: gallery.loaded)
    gallery.grid.select_labels([gallery.shown_labels[0]])
    gallery.on_cell_clicked(gallery.shown_labels[0])
    settle(app)
    viewer.screenshot(str(OUT), canvas_only=False)
    print("wrote", OUT)
    viewer.close()


if __name__ == "__main__":
    main()
