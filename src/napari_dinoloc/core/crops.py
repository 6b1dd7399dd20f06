"""Fixed-size crops around cells (or tiles of a field of view), produced lazily batch by batch.

Only one batch exists at a time and the image is never padded as a whole, so memory does not grow
with the number of cells.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from .errors import DinolocError

CropBatch = tuple[np.ndarray, np.ndarray]  # (ids (B,), crops (B, C, S, S) float32)


def iter_cell_crops(image, labels: np.ndarray, table, crop_size: int, mask_background: bool = True,
                    batch_size: int = 32) -> Iterator[CropBatch]:
    """Crops of ``crop_size`` px centred on each cell's centroid, in table order.

    Outside the image the crop is zero; with ``mask_background`` everything outside that cell's own
    mask (background and neighbouring cells) is zero too, as DINO4Cells' single-cell crops.
    """
    data = image.data
    if labels.shape != data.shape[1:]:
        raise DinolocError(f"The label image is {labels.shape[0]}×{labels.shape[1]} but the image is "
                           f"{data.shape[1]}×{data.shape[2]}: use labels made for this image.")
    _check_sizes(crop_size, batch_size, data.shape[0])
    return _cell_batches(data, labels, table, int(crop_size), mask_background, int(batch_size))


def _check_sizes(crop_size, batch_size, channels: int, side=None) -> None:
    """Refuse sizes below 1, and a batch of crops that cannot fit in memory (checked before allocating it)."""
    if crop_size is not None and int(crop_size) < 1:
        raise DinolocError(f"The crop size must be at least 1 pixel (got {crop_size}).")
    if int(batch_size) < 1:
        raise DinolocError(f"The batch size must be at least 1 (got {batch_size}).")
    side = int(crop_size) if side is None else int(side)
    needed = side * side * int(channels) * int(batch_size) * 4  # float32
    limit = crop_memory_limit()
    if needed > limit:
        largest = math.isqrt(limit // (int(channels) * int(batch_size) * 4))
        raise DinolocError(
            f"A batch of {batch_size} crops of {side} × {side} pixels with {channels} channel(s) needs "
            f"{needed / 1e9:.1f} GB, more than the {limit / 1e9:.1f} GB allowed (half the free memory). "
            f"Use a crop size of at most {largest} px, or a smaller batch size."
        )


def check_batch_fits(crop_size: int, batch_size: int, channels: int) -> None:
    """What ``iter_cell_crops`` checks before allocating, for a check before the long work starts."""
    _check_sizes(crop_size, batch_size, channels)


def crop_memory_limit() -> int:
    """Bytes one batch of crops may take: half the memory free now."""
    from .devices import available_memory

    return available_memory() // 2


def _cell_batches(data, labels, table, crop_size, mask_background, batch_size) -> Iterator[CropBatch]:
    ids = np.asarray(table.label)
    rows = np.rint(np.asarray(table.centroid_y)).astype(np.int64)
    cols = np.rint(np.asarray(table.centroid_x)).astype(np.int64)
    half = crop_size // 2
    for start in range(0, len(ids), batch_size):
        stop = min(start + batch_size, len(ids))
        batch = np.zeros((stop - start, data.shape[0], crop_size, crop_size), np.float32)
        for i in range(start, stop):
            mask_label = ids[i] if mask_background else None
            _copy_window(data, labels, rows[i] - half, cols[i] - half, batch[i - start], mask_label)
        yield ids[start:stop].copy(), batch


def cell_window(array: np.ndarray, centroid, size: int) -> np.ndarray:
    """``array[:, ...]`` ((C, Y, X): channels or ``labels[None]``) in a ``size`` px window centred on
    ``centroid`` (y, x) as the cell crops are, zero outside the image."""
    out = np.zeros((array.shape[0], size, size), array.dtype)
    half = size // 2
    _copy_window(array, None, int(np.rint(centroid[0])) - half, int(np.rint(centroid[1])) - half, out)
    return out


def _copy_window(data, labels, top: int, left: int, out: np.ndarray, mask_label=None) -> None:
    """Copy data[:, top:top+S, left:left+S] into ``out`` (already zero), clipped at the image borders."""
    size_y, size_x = out.shape[1:]
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + size_y, data.shape[1]), min(left + size_x, data.shape[2])
    if y0 >= y1 or x0 >= x1:
        return
    target = out[:, y0 - top:y1 - top, x0 - left:x1 - left]
    target[...] = data[:, y0:y1, x0:x1]
    if mask_label is not None:
        target *= labels[y0:y1, x0:x1] == mask_label


def iter_field_crops(image, tile_size: int | None, batch_size: int) -> Iterator[CropBatch]:
    """The whole image zero-padded to a square (``tile_size`` None), or non-overlapping tiles in
    row-major order, edge tiles zero-padded; ids are tile indices."""
    side = tile_size if tile_size is not None else max(image.data.shape[1:])
    _check_sizes(tile_size, batch_size, image.data.shape[0], side)
    return _field_batches(image.data, tile_size, int(batch_size))


def field_tile_origins(shape: tuple[int, int], tile_size: int | None) -> list[tuple[int, int, int]]:
    """(top, left, size) of every crop of a field: one centred square, or the tile grid."""
    height, width = shape
    if tile_size is None:
        side = max(height, width)
        return [(-((side - height) // 2), -((side - width) // 2), side)]
    return [(top, left, tile_size) for top in range(0, height, tile_size) for left in range(0, width, tile_size)]


def _field_batches(data, tile_size, batch_size) -> Iterator[CropBatch]:
    origins = field_tile_origins(data.shape[1:], tile_size)
    for start in range(0, len(origins), batch_size):
        chunk = origins[start:start + batch_size]
        side = chunk[0][2]
        batch = np.zeros((len(chunk), data.shape[0], side, side), np.float32)
        for i, (top, left, _) in enumerate(chunk):
            _copy_window(data, None, top, left, batch[i])
        yield np.arange(start, start + len(chunk)), batch


def crop_size_for(table, margin: float = 1.5, multiple: int = 16) -> int:
    """A crop that holds nearly every cell with some context: small cells then fill the model's view
    instead of a corner of a 224-px window (on the synthetic sample this doubles the accuracy of a
    head on random-weight features)."""
    extent = np.maximum(table.bbox[:, 2] - table.bbox[:, 0], table.bbox[:, 3] - table.bbox[:, 1])
    return int(np.ceil(margin * np.percentile(extent, 95) / multiple) * multiple)
