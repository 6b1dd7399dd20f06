"""The annotated cells to fine-tune on: their crops collected image by image, checked, split, embedded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from ..embedding import EmbedSettings, Embedder
from ..errors import DinolocError
from ..heads import MIN_CELLS_PER_CLASS, encode_classes
from ..progress import CancelToken, check_cancel, report
from ..stains import channel_order


@dataclass
class CellSet:
    """Crops of the annotated cells, ready to train on (only these stay in memory, not the images)."""

    crops: np.ndarray  # (N, C, S, S) float32, raw [0, 1], background masked as the engine does
    classes: np.ndarray  # (N,) class names
    stains: tuple[str, ...]
    origins: list[tuple[str, int]]  # (image name, cell label) of each crop
    not_found: int = 0  # annotated labels that are no cell of their label image (skipped)

    def __len__(self) -> int:
        return len(self.classes)

    def subset(self, rows) -> "CellSet":
        rows = np.asarray(rows)
        return CellSet(self.crops[rows], self.classes[rows], self.stains, [self.origins[i] for i in rows], self.not_found)



def collect_annotated_cells(image_cells, embed_settings: EmbedSettings, cancel: Optional[CancelToken] = None) -> CellSet:
    """Crops (as the engine makes them) of every annotated cell that exists in its label image."""
    crops, classes, origins, stains, not_found = [], [], [], None, 0
    for image, labels, cell_classes in image_cells:
        check_cancel(cancel)
        stains = stains or tuple(image.stains)
        order = list(_channel_order(image.stains, stains, image.name))
        wanted = {int(label): str(name).strip() for label, name in cell_classes.items() if name and str(name).strip()}
        found = 0
        for label, crop in _crops_of(image, labels, wanted, embed_settings):
            crops.append(crop[order])
            classes.append(wanted[label])
            origins.append((image.name, label))
            found += 1
        not_found += len(wanted) - found
    if not crops:
        raise DinolocError("No annotated cells: give at least two classes a few annotated cells each "
                           "(their labels must be cells of the label image), then fine-tune.")
    return CellSet(np.stack(crops), np.asarray(classes, dtype=object), stains, origins, not_found)


def _crops_of(image, labels, wanted: Mapping[int, str], embed_settings: EmbedSettings):
    """(label, crop) of the cells in ``wanted`` that exist in ``labels``, cropped as ``embed_cells`` crops them."""
    from ..crops import iter_cell_crops
    from ..segmentation import CellTable

    table = CellTable.from_labels(labels)
    rows = np.flatnonzero(np.isin(table.label, list(wanted)))
    if len(rows) == 0:
        return
    window = embed_settings.window_for(table, image.shape)  # from the cell size of this image unless fixed
    batches = iter_cell_crops(image, labels, _table_rows(table, rows), window,
                              embed_settings.mask_background, embed_settings.batch_size)
    for ids, batch in batches:
        if embed_settings.input_size and window != embed_settings.input_size:
            batch = _resized(batch, embed_settings.input_size)  # crops of images with other cell sizes stack
        for label, crop in zip(ids, batch):
            yield int(label), crop


def _resized(batch: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=x.shape[-1] > size).numpy()


def _table_rows(table, rows):
    from ..segmentation import CellTable

    return CellTable(label=table.label[rows], centroid_y=table.centroid_y[rows], centroid_x=table.centroid_x[rows],
                     area=table.area[rows], bbox=table.bbox[rows])



def _channel_order(stains: Sequence[str], reference: tuple[str, ...], name: str) -> tuple[int, ...]:
    """Channel indices that put an image's channels in the first image's stain order."""
    if sorted(stains) != sorted(reference):
        raise DinolocError(f"The image {name} has the stains {list(stains)} but the first image has {list(reference)}: "
                           "fine-tune on images with the same stains.")
    return channel_order(reference, tuple(stains))


def check_annotations(cells: CellSet, class_names: Optional[Sequence[str]] = None,
                      min_cells: int = MIN_CELLS_PER_CLASS) -> tuple[tuple[str, ...], np.ndarray]:
    """Class order and index per cell; a DinolocError for one class or a class with too few cells."""
    return encode_classes(list(cells.classes), len(cells.classes), class_names, min_cells)


def stratified_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows): about ``val_fraction`` of each class, at least 1, never all of it."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        n_val = min(max(1, int(round(val_fraction * len(rows)))), len(rows) - 1)
        val.append(rows[:n_val])
        train.append(rows[n_val:])
    val = np.sort(np.concatenate(val))
    if len(val) == 0:
        raise DinolocError("Too few annotated cells to keep some for validation: annotate at least 2 cells of a class.")
    return np.sort(np.concatenate(train)), val


def embed_cell_crops(backbone, embed_settings: EmbedSettings, cells: CellSet, progress=None, cancel=None) -> np.ndarray:
    """(N, D) embeddings of the collected crops, by the engine's Embedder (as ``embed_cells`` makes them)."""
    embedder = Embedder(backbone, embed_settings)
    step = embedder.settings.batch_size
    parts = []
    for start in range(0, len(cells), step):
        check_cancel(cancel)
        parts.append(embedder.embed_batch(cells.crops[start:start + step], cells.stains))
        report(progress, min(start + step, len(cells)), len(cells), "Embedding the annotated cells")
    return np.concatenate(parts)
