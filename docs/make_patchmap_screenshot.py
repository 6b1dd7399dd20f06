"""The patch feature map screenshot for the docs (docs/images/09-patch-map.png) on the real HPA field.

Run: xvfb-run -a .venv/bin/python docs/make_patchmap_screenshot.py [FIELD_FOLDER] [WEIGHTS]
FIELD_FOLDER holds the HPA stain files <id>_red/green/blue/yellow.png (default: ../shared/data/hpa_fov_4ch);
WEIGHTS: a weights file for the 'checkpoint' backbone (default: the shipped dinoloc-cells model).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch  # noqa: F401  (torch and timm before Qt)
import timm  # noqa: F401

HERE = Path(__file__).resolve().parent
FIELD = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[1] / "shared" / "data" / "hpa_fov_4ch"
WEIGHTS = sys.argv[2] if len(sys.argv) > 2 else None
OUT = HERE / "images" / "09-patch-map.png"


def idle(dock, app) -> None:
    while dock.runner.busy:
        app.processEvents()
        time.sleep(0.02)
    for _ in range(10):
        app.processEvents()
        time.sleep(0.05)


def main() -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_dinoloc.core.images import find_hpa_groups, load_cell_image
    from napari_dinoloc.widgets.dock import DinolocWidget

    image = load_cell_image(find_hpa_groups([FIELD])[0])
    viewer = napari.Viewer(show=True, title="napari-dinoloc: patch feature map")
    viewer.window._qt_window.resize(1600, 1000)  # as docs/make_screenshots.py, which also makes this picture
    colours = {"microtubules": "red", "protein": "green", "nucleus": "blue", "er": "yellow"}
    for channel, stain in zip(image.data, image.stains):
        viewer.add_image(channel, name=stain, colormap=colours[stain], blending="additive")
    dock = DinolocWidget(viewer)
    viewer.window.add_dock_widget(dock, name="DINO localization", area="right")
    app = QApplication.instance()
    dock.image_panel.refresh()
    dock.image_panel.set_stains(list(image.stains))
    dock.image_panel.nucleus_diameter.setValue(110)
    dock.image_panel.cell_diameter.setValue(300)
    dock.image_panel.segment()
    idle(dock, app)
    if WEIGHTS:
        dock.model_panel.choose("checkpoint", crop_size=256)
        dock.model_panel.weights.setText(WEIGHTS)
    else:
        dock.model_panel.choose("dinoloc-cells", crop_size=256)
    viewer.reset_view()
    idle(dock, app)
    dock.patch_map_panel.show_pca()
    idle(dock, app)
    for stain in ("microtubules", "er"):
        viewer.layers[stain].visible = False
    dock.show_step(7)
    idle(dock, app)
    viewer.screenshot(str(OUT), canvas_only=False)
    print("wrote", OUT)
    viewer.close()


if __name__ == "__main__":
    main()
