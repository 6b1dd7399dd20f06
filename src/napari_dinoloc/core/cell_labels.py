"""Label images of cells: cleaning, a user's label image checked, the per-cell table, matching to a reference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .errors import DinolocError


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


def drop_border_cells(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Cells touching the image border removed (they are cut, so their shape and pattern mislead);
    the rest numbered 1..N, and how many were dropped."""
    labels = np.asarray(labels)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    edge = edge[edge > 0]
    if not len(edge):
        return labels, 0
    return relabel(np.where(np.isin(labels, edge), 0, labels)), int(len(edge))
