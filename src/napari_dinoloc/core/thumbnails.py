"""Cell thumbnails for the gallery: uint8 RGB pictures of single cells, as CellProfiler Analyst's montage.

Every thumbnail shows the same window size (a window holding nearly every cell of the image, from
``crops.crop_size_for``), so cells can be compared by size; the window is cut as the embedding crops
are (``crops.cell_window``). Contrast is set per cell from the pixels of that cell, so a dim cell is
as readable as a bright one; the neighbours around it are dimmed so the cell itself stands out.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np

from .crops import cell_window, crop_size_for
from .errors import DinolocError
from .progress import CancelToken, ProgressCallback, check_cancel, report
from .stains import AGP, DNA, ER, MICROTUBULES, MITO, NUCLEUS, OTHER, PROTEIN, RNA

PROTEIN_VIEW, COMPOSITE_VIEW = "protein", "composite"
VIEWS = (PROTEIN_VIEW, COMPOSITE_VIEW)
#: Colours of the stains in a composite: the HPA convention (protein green, nucleus blue,
#: microtubules red, ER yellow), Cell Painting dyes in the remaining hues.
STAIN_COLOURS = {
    PROTEIN: (0.0, 1.0, 0.0), NUCLEUS: (0.0, 0.35, 1.0), DNA: (0.0, 0.35, 1.0), MICROTUBULES: (1.0, 0.0, 0.0),
    ER: (1.0, 0.85, 0.0), RNA: (0.0, 0.9, 0.9), AGP: (1.0, 0.0, 0.0), MITO: (1.0, 0.0, 1.0), OTHER: (0.6, 0.6, 0.6),
}
GREY = (1.0, 1.0, 1.0)
OUTSIDE_CELL = 0.4       # brightness kept around the cell (its neighbours, the background)
LOW, HIGH = 0.5, 99.5    # percentiles of the cell's own pixels mapped to black and white
MIN_RANGE = 0.02         # an empty cell stays dark instead of showing its noise at full contrast
CHUNK = 24               # thumbnails per chunk: the gallery fills progressively


def thumbnail_window(table) -> int:
    """Window side in image pixels shared by all thumbnails of ``table``'s cells."""
    if len(table) == 0:
        return 16
    return max(16, crop_size_for(table, margin=1.25, multiple=2))


def cell_thumbnails(image, labels: np.ndarray, table, cell_ids: Sequence[int], size: int = 96,
                    view: str = PROTEIN_VIEW, window: Optional[int] = None,
                    progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> np.ndarray:
    """(N, size, size, 3) uint8 thumbnails of the cells ``cell_ids`` (labels), in that order."""
    out = np.zeros((len(cell_ids), size, size, 3), np.uint8)
    done = 0
    for ids, pictures in iter_thumbnails(image, labels, table, cell_ids, size, view, window, cancel=cancel):
        out[done:done + len(ids)] = pictures
        done += len(ids)
        report(progress, done, len(cell_ids), "Thumbnails")
    return out


def iter_thumbnails(image, labels: np.ndarray, table, cell_ids: Sequence[int], size: int = 96,
                    view: str = PROTEIN_VIEW, window: Optional[int] = None, chunk: int = CHUNK,
                    cancel: Optional[CancelToken] = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, thumbnails) ``chunk`` cells at a time, so a caller can show the first ones at once."""
    if view not in VIEWS:
        raise DinolocError(f"Unknown thumbnail view {view!r}: choose one of {', '.join(VIEWS)}.")
    if int(size) < 8:
        raise DinolocError(f"A thumbnail must be at least 8 pixels wide (got {size}).")
    if labels.shape != image.shape:
        raise DinolocError("The label image does not match the image: segment this image again.")
    source, colours = _channels_and_colours(image, view)
    window = int(window or thumbnail_window(table))
    ids = np.asarray(cell_ids, dtype=np.int64)
    for start in range(0, len(ids), chunk):
        check_cancel(cancel)
        part = ids[start:start + chunk]
        pictures = np.zeros((len(part), size, size, 3), np.uint8)
        for i, label in enumerate(part):
            row = _row_of(table, int(label))
            centroid = (table.centroid_y[row], table.centroid_x[row])
            pixels = cell_window(source, centroid, window)
            mask = cell_window(labels[None], centroid, window)[0] == label
            pictures[i] = render_cell(pixels, mask, colours, size)
        yield part, pictures


def render_cell(pixels: np.ndarray, mask: np.ndarray, colours: np.ndarray, size: int) -> np.ndarray:
    """One thumbnail: channels ``pixels`` (C, S, S) in ``colours`` (C, 3), contrast from the cell ``mask``."""
    rgb = np.zeros(mask.shape + (3,), np.float32)
    for plane, colour in zip(pixels, colours):
        low, high = cell_range(plane, mask)
        scaled = np.clip((plane - low) / (high - low), 0.0, 1.0)
        rgb += scaled[..., None] * colour
    rgb = np.clip(rgb, 0.0, 1.0)
    rgb[~mask] *= OUTSIDE_CELL
    return (resize_square(rgb, size) * 255 + 0.5).astype(np.uint8)


def cell_range(plane: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Intensities of the cell's own pixels mapped to black and white."""
    values = plane[mask] if mask.any() else plane.ravel()
    low, high = np.percentile(values, (LOW, HIGH))
    return float(low), float(max(high, low + MIN_RANGE))


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """(S, S, 3) -> (size, size, 3), averaging when shrinking so fine structure does not alias."""
    from skimage.transform import resize

    if rgb.shape[0] == size:
        return rgb
    return resize(rgb, (size, size), order=1, anti_aliasing=rgb.shape[0] > size, preserve_range=True)


def _channels_and_colours(image, view: str) -> tuple[np.ndarray, np.ndarray]:
    """The channels to show (a view of the image, never a copy of it) and the colour of each."""
    if view == PROTEIN_VIEW:
        protein = image.channel_index(PROTEIN) or 0
        return image.data[protein:protein + 1], np.array([GREY], np.float32)
    colours = [STAIN_COLOURS.get(stain, STAIN_COLOURS[OTHER]) for stain in image.stains]
    return image.data, np.array(colours, np.float32)


def _row_of(table, label: int) -> int:
    try:
        return table.index_of(label)
    except KeyError:
        raise DinolocError(f"There is no cell {label} in the current cells: refresh the gallery.") from None
