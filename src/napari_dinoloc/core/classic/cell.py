"""One cell cut out of the field: its bounding box (with some context), its mask and its nucleus."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

#: Pixels of context kept around each cell's bounding box (the top-hat and LBP look this far).
CONTEXT = 6
#: A nucleus found by Otsu inside a cell must stand this many noise levels above the rest of the
#: cell, and cover a plausible share of it; otherwise the cell is treated as having no nucleus.
MIN_NUCLEUS_CONTRAST = 2.0
NUCLEUS_SHARE = (0.02, 0.9)
MIN_NUCLEUS_PIXELS = 4


@dataclass
class CellPatch:
    channels: np.ndarray  # (C, h, w) float32 pixels of the box, neighbours included
    mask: np.ndarray  # (h, w) bool, the cell
    nucleus: np.ndarray  # (h, w) bool, the nucleus inside the cell (all False if none)

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def has_nucleus(self) -> bool:
        return bool(self.nucleus.any())


def cell_boxes(labels: np.ndarray, cell_labels) -> list[tuple[slice, slice] | None]:
    """The bounding box of each listed label, widened by CONTEXT (None for a label not in the image)."""
    boxes = ndi.find_objects(labels)
    height, width = labels.shape
    out = []
    for label in cell_labels:
        box = boxes[label - 1] if 0 < label <= len(boxes) else None
        if box is None:
            out.append(None)
            continue
        ys, xs = box
        out.append((slice(max(ys.start - CONTEXT, 0), min(ys.stop + CONTEXT, height)),
                    slice(max(xs.start - CONTEXT, 0), min(xs.stop + CONTEXT, width))))
    return out


def cut_cell(image_data: np.ndarray, labels: np.ndarray, label: int, box, nucleus_channel: int | None,
             nuclei: np.ndarray | None) -> CellPatch:
    channels = image_data[(slice(None), *box)]
    mask = labels[box] == label
    if nuclei is not None:
        nucleus = mask & (nuclei[box] > 0)
        nucleus = nucleus if nucleus.sum() >= MIN_NUCLEUS_PIXELS else np.zeros_like(mask)
    elif nucleus_channel is not None:
        nucleus = nucleus_by_otsu(channels[nucleus_channel], mask)
    else:
        nucleus = np.zeros_like(mask)
    return CellPatch(channels, mask, nucleus)


def nucleus_by_otsu(stain: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The largest bright blob of the nucleus stain inside the cell, holes filled; empty if the
    stain does not clearly separate (no nucleus in this cell, or a cut-off fragment)."""
    from skimage.filters import threshold_otsu

    none = np.zeros_like(mask)
    values = stain[mask]
    if values.size < 2 * MIN_NUCLEUS_PIXELS or values.max() - values.min() < 1e-6:
        return none
    bright = mask & (stain > threshold_otsu(values))
    share = bright.sum() / values.size
    if not NUCLEUS_SHARE[0] <= share <= NUCLEUS_SHARE[1]:
        return none
    inside, outside = stain[bright], stain[mask & ~bright]
    if inside.mean() - outside.mean() < MIN_NUCLEUS_CONTRAST * max(outside.std(), 1e-3):
        return none
    blobs, n = ndi.label(bright)
    if n > 1:
        bright = blobs == 1 + int(np.argmax(np.bincount(blobs.ravel())[1:]))
    bright = ndi.binary_fill_holes(bright) & mask
    return bright if bright.sum() >= MIN_NUCLEUS_PIXELS else none
