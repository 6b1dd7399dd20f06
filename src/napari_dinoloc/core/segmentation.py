"""Finding cells: nuclei from the nucleus stain, cells grown from them on a cytoplasm stain.

Classical and fast (no deep model): smooth, threshold, split touching nuclei by the distance
transform, then a seeded watershed on the cytoplasm channel. Users with better masks (e.g.
Cellpose) give a label image instead; :func:`prepare_labels` checks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from .errors import DinolocError
from .progress import CancelToken, ProgressCallback, check_cancel, report
from .stains import ER, MICROTUBULES, NUCLEUS, PROTEIN

if TYPE_CHECKING:
    from .images import CellImage

#: Stains tried, in order, to grow cells from their nuclei when none is chosen.
CYTOPLASM_STAINS = (MICROTUBULES, ER, PROTEIN)
#: A pixel is cytoplasm when it is this many noise levels above the background.
BACKGROUND_NOISE_LEVELS = 4.0
#: Weight of the distance to the nucleus against intensity in the watershed, per nucleus diameter:
#: without it a bright neighbour floods along a dim cell's bright membrane.
COMPACTNESS_PER_DIAMETER = 0.28
#: Nuclei must stand this many noise levels above the rest of the nucleus channel (Otsu splits
#: pure noise at ~2.6; real nucleus stains measure 5 to 50).
MIN_NUCLEUS_CONTRAST = 3.5


@dataclass(frozen=True)
class SegmentationParams:
    nucleus_diameter: float = 28.0  # pixels
    cell_diameter: float = 56.0  # pixels
    min_cell_area: int | None = None  # default derived from nucleus_diameter
    cytoplasm_stain: str | None = None  # None: microtubules, else er, else protein

    def __post_init__(self) -> None:
        if not self.nucleus_diameter > 2:
            raise DinolocError(f"The nucleus diameter must be more than 2 pixels (got {self.nucleus_diameter}).")
        if not self.cell_diameter >= self.nucleus_diameter:
            raise DinolocError(
                f"The cell diameter ({self.cell_diameter} px) must be at least the nucleus diameter "
                f"({self.nucleus_diameter} px)."
            )

    @property
    def min_area(self) -> int:
        """Smallest cell kept: a quarter of a typical nucleus (debris and fragments are smaller)."""
        if self.min_cell_area is not None:
            return int(self.min_cell_area)
        return max(4, int(0.25 * np.pi * (self.nucleus_diameter / 2) ** 2))


def segment_cells(
    image: "CellImage", params: SegmentationParams = SegmentationParams(), progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> np.ndarray:
    """(Y, X) int32 cell labels 1..N (0 = background), one cell per nucleus found."""
    nucleus = image.channel(NUCLEUS)
    if nucleus is None:
        raise DinolocError(
            f"{image.name} has no nucleus channel, which is needed to find cells: assign one "
            "(e.g. 'protein=1,nucleus=0'), or give a label image of the cells instead."
        )
    report(progress, 0, 3, "Finding nuclei")
    nuclei = segment_nuclei(nucleus, params)
    if nuclei.max() == 0:
        raise no_cells_found(image.name, params, "nuclei", nucleus)
    check_cancel(cancel)
    report(progress, 1, 3, "Growing cells from nuclei")
    cytoplasm = cytoplasm_channel(image, params)
    cells = grow_cells(nuclei, cytoplasm, params)
    check_cancel(cancel)
    report(progress, 2, 3, "Cleaning up cells")
    cells = remove_small(cells, params.min_area)
    if cells.max() == 0:
        raise no_cells_found(image.name, params, "cells")
    report(progress, 3, 3, "Cells found")
    return cells


def no_cells_found(name: str, params: SegmentationParams, what: str, nucleus: np.ndarray | None = None) -> DinolocError:
    hint = ""
    if nucleus is not None and np.percentile(nucleus, 95) < 0.05:
        hint = " The nucleus channel is nearly dark: check that the right channel is assigned to the nucleus."
    elif nucleus is not None:
        hint = " If the nucleus channel shows no clear nuclei, check that the right channel is assigned to the nucleus."
    return DinolocError(
        f"No {what} found in {name} with a nucleus diameter of {params.nucleus_diameter:g} px and a cell "
        f"diameter of {params.cell_diameter:g} px. Measure a nucleus and a cell in the image (in pixels) and "
        "set those sizes (try half or double the current ones), or give a label image." + hint
    )


def cytoplasm_channel(image: "CellImage", params: SegmentationParams) -> np.ndarray | None:
    if params.cytoplasm_stain is not None:
        channel = image.channel(params.cytoplasm_stain)
        if channel is None:
            raise DinolocError(
                f"{image.name} has no {params.cytoplasm_stain!r} channel to grow cells on: choose one of "
                f"its stains ({', '.join(image.stains)}), or leave the choice automatic."
            )
        return channel
    return next((image.channel(s) for s in CYTOPLASM_STAINS if image.channel(s) is not None), None)


# ----------------------------------------------------------------------------------------------
# Nuclei
# ----------------------------------------------------------------------------------------------


def segment_nuclei(nucleus: np.ndarray, params: SegmentationParams) -> np.ndarray:
    """Nuclei as int32 labels: smooth, threshold, then split touching nuclei."""
    from skimage.filters import threshold_otsu

    nucleus = np.asarray(nucleus, np.float32)
    smooth = ndi.gaussian_filter(nucleus, sigma=max(1.0, params.nucleus_diameter / 14))
    if smooth.max() <= smooth.min():
        return np.zeros(nucleus.shape, np.int32)
    mask = smooth > threshold_otsu(smooth)
    if contrast(smooth, mask) < MIN_NUCLEUS_CONTRAST:
        return np.zeros(nucleus.shape, np.int32)  # noise only: no nuclei to find
    mask = ndi.binary_fill_holes(ndi.binary_opening(mask, iterations=1))
    nuclei = split_touching(mask, params.nucleus_diameter)
    return remove_small(nuclei, max(4, int(0.15 * np.pi * (params.nucleus_diameter / 2) ** 2)))


def contrast(smooth: np.ndarray, mask: np.ndarray) -> float:
    """How far the bright pixels stand above the rest, in noise levels of the rest."""
    if mask.all() or not mask.any():
        return 0.0
    rest = smooth[~mask]
    return float((smooth[mask].mean() - rest.mean()) / (rest.std() + 1e-12))


def split_touching(mask: np.ndarray, nucleus_diameter: float) -> np.ndarray:
    """One seed per distance-transform peak at least ~a nucleus radius apart, then a watershed."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    distance = ndi.distance_transform_edt(mask)
    # Smoothing the distance removes the ridges of rough outlines that would over-split nuclei.
    distance = ndi.gaussian_filter(distance, sigma=max(1.0, nucleus_diameter / 20))
    components, _ = ndi.label(mask)
    peaks = peak_local_max(
        distance,
        min_distance=max(2, int(nucleus_diameter * 0.35)),
        threshold_abs=nucleus_diameter * 0.12,
        labels=components,
        exclude_border=False,
    )
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=mask).astype(np.int32)


# ----------------------------------------------------------------------------------------------
# Cells
# ----------------------------------------------------------------------------------------------


def grow_cells(nuclei: np.ndarray, cytoplasm: np.ndarray | None, params: SegmentationParams) -> np.ndarray:
    """Seeded watershed from the nuclei on the cytoplasm channel, within reach of a nucleus."""
    from skimage.segmentation import watershed

    reach = max(1.0, params.cell_diameter - params.nucleus_diameter)
    from_nucleus = ndi.distance_transform_edt(nuclei == 0)
    if cytoplasm is None:  # nucleus-only images: cells are the nuclei grown by the reach
        from skimage.segmentation import expand_labels

        return expand_labels(nuclei, distance=reach / 2).astype(np.int32)
    cytoplasm = np.asarray(cytoplasm, np.float32)
    # Light smoothing for the outline (heavier would swell every cell), more for the watershed.
    lightly = ndi.gaussian_filter(cytoplasm, sigma=max(1.0, params.nucleus_diameter / 28))
    foreground = (cytoplasm_foreground(lightly) & (from_nucleus <= reach)) | (nuclei > 0)
    landscape = watershed_landscape(cytoplasm, foreground, params)
    # Nuclei are the sources: each floods its own bright cytoplasm before a neighbour can.
    landscape[nuclei > 0] = landscape.min()
    cells = watershed(landscape, nuclei, mask=foreground, compactness=COMPACTNESS_PER_DIAMETER / params.nucleus_diameter)
    return keep_nucleus_connected(cells.astype(np.int32))


def watershed_landscape(cytoplasm: np.ndarray, foreground: np.ndarray, params: SegmentationParams) -> np.ndarray:
    """Bright cytoplasm is low ground (about -1), background high (0)."""
    smooth = ndi.gaussian_filter(cytoplasm, sigma=max(1.0, params.nucleus_diameter / 14))
    background = np.median(smooth[~foreground]) if (~foreground).any() else smooth.min()
    signal = np.maximum(smooth - background, 0)
    return -signal / (np.percentile(signal[foreground], 99) + 1e-6)


def cytoplasm_foreground(smooth: np.ndarray) -> np.ndarray:
    """Pixels a few noise levels above the background, so that dim cytoplasm is kept."""
    background, noise = background_and_noise(smooth)
    return ndi.binary_fill_holes(smooth > background + BACKGROUND_NOISE_LEVELS * noise)


def background_and_noise(smooth: np.ndarray) -> tuple[float, float]:
    """Level and spread of the background from the histogram's lowest peak.

    Even a few percent of background pixels make a sharp peak at the bottom of the histogram,
    while cytoplasm spreads over many levels; the peak's left half is untouched by cells, so its
    half-width gives the noise. Works for sparse and for nearly confluent fields.
    """
    step = max(1, int(np.sqrt(smooth.size / 1_000_000)))
    sample = smooth[::step, ::step].ravel()
    low, high = np.percentile(sample, [0.1, 60])
    if high <= low:
        return float(low), float(np.std(sample)) + 1e-6
    counts, edges = np.histogram(sample, bins=200, range=(low, high))
    counts = ndi.gaussian_filter1d(counts.astype(np.float64), 1.5)
    centres = (edges[:-1] + edges[1:]) / 2
    peak = int(np.argmax(counts))
    below_half = np.nonzero(counts[:peak] < counts[peak] / 2)[0]
    width = centres[peak] - centres[below_half[-1]] if len(below_half) else edges[1] - edges[0]
    return float(centres[peak]), float(max(width / 1.1774, edges[1] - edges[0]))


def keep_nucleus_connected(cells: np.ndarray) -> np.ndarray:
    """Watershed can leave a cell's stray piece across a neighbour; keep the largest piece."""
    out = cells.copy()
    for label, box in enumerate(ndi.find_objects(cells), start=1):
        if box is None:
            continue
        local = cells[box] == label
        parts, n = ndi.label(local)
        if n > 1:
            sizes = np.bincount(parts.ravel())[1:]
            out[box][local & (parts != 1 + int(np.argmax(sizes)))] = 0
    return out


def remove_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Drop objects smaller than ``min_area`` and number the rest 1..N."""
    areas = np.bincount(labels.ravel())
    small = areas < min_area
    small[0] = False
    cleaned = np.where(small[labels], 0, labels)
    return relabel(cleaned)


def relabel(labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(labels)[0].astype(np.int32, copy=False)


# ----------------------------------------------------------------------------------------------
# User label images
# ----------------------------------------------------------------------------------------------


def prepare_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Check a user's label image against the image ``shape``; int32, numbered 1..N."""
    labels = np.squeeze(np.asarray(labels))
    shape = tuple(int(s) for s in shape)
    if labels.shape != shape:
        raise DinolocError(
            f"The label image has shape {labels.shape} but the image has shape {shape} (Y, X): "
            "give a label image of the same field of view, as a single 2-D plane."
        )
    if labels.dtype.kind == "b":
        labels = ndi.label(labels)[0]  # a mask: each connected blob is one cell
    elif labels.dtype.kind == "f":
        if not np.isfinite(labels).all() or not np.array_equal(labels, np.round(labels)):
            raise DinolocError("The label image holds fractional or NaN values: give whole-number cell labels (0 = background).")
    elif labels.dtype.kind not in "iu":
        raise DinolocError(f"The label image holds {labels.dtype} values: give whole-number cell labels (0 = background).")
    if labels.min() < 0:
        raise DinolocError("The label image has negative values: use 0 for the background and 1, 2, ... for cells.")
    labels = relabel(labels.astype(np.int64))
    if labels.max() == 0:
        raise DinolocError("The label image is empty (all 0): it marks no cells. Choose another label image or segment the cells.")
    return labels


# ----------------------------------------------------------------------------------------------
# Per-cell table and evaluation
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CellTable:
    """Per-cell geometry, one row per label, sorted by label."""

    label: np.ndarray  # (N,) int32
    centroid_y: np.ndarray  # (N,) float64
    centroid_x: np.ndarray  # (N,) float64
    area: np.ndarray  # (N,) int64, pixels
    bbox: np.ndarray  # (N, 4) int: min_row, min_col, max_row, max_col (max exclusive, as skimage)

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def index_of(self, label: int) -> int:
        """Row of ``label``; KeyError when the table has no such cell."""
        index = int(np.searchsorted(self.label, label))
        if index >= len(self) or self.label[index] != label:
            raise KeyError(f"no cell with label {label}")
        return index

    @classmethod
    def from_labels(cls, labels: np.ndarray) -> "CellTable":
        labels = np.asarray(labels)
        boxes = ndi.find_objects(labels)
        present = np.array([i + 1 for i, box in enumerate(boxes) if box is not None], np.int32)
        flat = labels.ravel()
        size = len(boxes) + 1
        counts = np.bincount(flat, minlength=size)
        rows, cols = np.indices(labels.shape)
        sum_y = np.bincount(flat, weights=rows.ravel(), minlength=size)
        sum_x = np.bincount(flat, weights=cols.ravel(), minlength=size)
        area = counts[present].astype(np.int64)
        bbox = np.array(
            [[boxes[i - 1][0].start, boxes[i - 1][1].start, boxes[i - 1][0].stop, boxes[i - 1][1].stop] for i in present],
            dtype=np.int64,
        ).reshape(-1, 4)
        return cls(present, sum_y[present] / np.maximum(area, 1), sum_x[present] / np.maximum(area, 1), area, bbox)


def match_cells(predicted: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> float:
    """Fraction of ``truth`` cells matched one-to-one by a ``predicted`` cell at IoU >= ``iou``.

    Pairs are matched greedily from the highest IoU down; for ``iou`` >= 0.5 that is exact, since
    a cell can then overlap only one other cell that much.
    """
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    if predicted.shape != truth.shape:
        raise DinolocError(f"Cannot compare label images of shapes {predicted.shape} and {truth.shape}.")
    truth_ids = np.unique(truth[truth > 0])
    if len(truth_ids) == 0:
        raise DinolocError("The ground-truth label image has no cells: nothing to match.")
    pred_area = np.bincount(predicted.ravel())
    truth_area = np.bincount(truth.ravel())
    both = (predicted > 0) & (truth > 0)
    stride = np.int64(truth.max()) + 1
    codes, overlap = np.unique(predicted[both].astype(np.int64) * stride + truth[both], return_counts=True)
    pred_ids, true_ids = codes // stride, codes % stride
    ious = overlap / (pred_area[pred_ids] + truth_area[true_ids] - overlap)
    used_pred, used_truth = set(), set()
    for k in np.argsort(-ious, kind="stable"):
        if ious[k] < iou:
            break
        p, t = int(pred_ids[k]), int(true_ids[k])
        if p not in used_pred and t not in used_truth:
            used_pred.add(p)
            used_truth.add(t)
    return len(used_truth) / len(truth_ids)
