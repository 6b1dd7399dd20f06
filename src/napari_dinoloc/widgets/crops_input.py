"""Single-cell crops in the viewer: a folder (classes from sub-folders) or a stack shown as a mosaic.

Each crop becomes one cell of a mosaic image (one layer per channel, a Labels layer with one label
per crop), and crops with a class are annotated with it, so every later step works as on a field.
"""

from __future__ import annotations

from pathlib import Path

from ._workers import notify_info, reports_errors

CROP_CELLS = "crop cells"
STACK_FILES = "Crop stacks (*.npy *.tif *.tiff);;All files (*)"


@reports_errors("Opening the crops")
def choose_crops(panel) -> None:
    """Ask for a folder of crops and open it in ``panel``'s viewer."""
    from qtpy.QtWidgets import QFileDialog

    folder = QFileDialog.getExistingDirectory(panel, "Folder of single-cell crops")
    if folder:
        open_crops(panel, folder)


@reports_errors("Opening the crop stack")
def choose_crop_stack(panel) -> None:
    """Ask for a stack file of crops, (N, C, H, W) in .npy or .tif, and open it in ``panel``'s viewer."""
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getOpenFileName(panel, "Stack of single-cell crops (N, C, H, W)", "", STACK_FILES)
    if path:
        open_crops(panel, path)


def open_crops(panel, path, mask: str = "whole") -> object:
    """Lay the crops of ``path`` out in ``panel``'s viewer, use them as the cells, annotate their classes."""
    from ..core.crop_inputs import crop_mosaic
    from ..core.stains import conventional_stains

    mosaic = crop_mosaic(path, mask)
    viewer = panel.viewer
    stains = conventional_stains(mosaic.data.shape[0])
    for stain, plane in zip(stains, mosaic.data):
        viewer.add_image(plane, name=f"crops {stain}")
    viewer.add_labels(mosaic.labels, name=CROP_CELLS)
    panel.refresh()
    panel.labels_source.setCurrentText(CROP_CELLS)
    panel.use_labels_layer()
    annotate_classes(panel.state, mosaic)
    notify_info(f"{len(mosaic.names)} crops from {Path(path).name}"
                + (f", {len(mosaic.classes)} with a class from their folder." if mosaic.classes else "."))
    return mosaic


def annotate_classes(state, mosaic) -> None:
    store = state.annotations
    if store is None or not mosaic.classes:
        return
    table = state.session.table
    for label, name in mosaic.classes.items():
        if name not in store.class_names:
            store.add_class(name)
        row = table.index_of(label)
        store.annotate(label, name, (float(table.centroid_y[row]), float(table.centroid_x[row])))
    store.save()
    state.annotations_changed.emit()
