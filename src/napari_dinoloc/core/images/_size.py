"""Is an image small enough to read? Decided from the size its file declares, before any pixel is read,
so an oversized image fails at once with a message instead of running out of memory minutes later."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..devices import available_memory
from ..errors import DinolocError

#: The largest field of view (pixels per plane) napari-dinoloc reads: 16384 × 16384.
MAX_SIDE = 16384
MAX_PLANE_PIXELS = MAX_SIDE * MAX_SIDE
#: Reading keeps the file's pixels and a float32 copy; segmentation needs a few more planes.
WORKING_COPIES = 3


def check_fits_in_memory(shape, dtype, axes: str | None, path: Path) -> None:
    """DinolocError when the image of ``shape``/``dtype`` (its ``axes`` letters, if known) cannot be handled."""
    shape = tuple(int(d) for d in shape)
    plane = _plane_pixels(shape, axes)
    size = " × ".join(str(d) for d in shape)
    if plane > MAX_PLANE_PIXELS:
        raise DinolocError(
            f"{path.name} is too large ({size} pixels): napari-dinoloc reads fields of view up to "
            f"{MAX_SIDE} × {MAX_SIDE} pixels. Crop it into smaller fields first."
        )
    needed = math.prod(shape) * (np.dtype(dtype).itemsize + 4 * WORKING_COPIES)
    available = available_memory()
    if needed > available:
        raise DinolocError(
            f"{path.name} ({size} pixels) needs about {needed / 1e9:.1f} GB of memory, but only "
            f"{available / 1e9:.1f} GB are free. Crop it into smaller fields, or close other programs."
        )


def _plane_pixels(shape: tuple[int, ...], axes: str | None) -> int:
    if axes and "Y" in axes and "X" in axes and len(axes) == len(shape):
        return shape[axes.index("Y")] * shape[axes.index("X")]
    spatial = [d for d in shape if d > 8] or list(shape)  # channel-like axes are small
    return math.prod(sorted(spatial)[-2:])
