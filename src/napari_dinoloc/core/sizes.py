"""Sizes measured from the image: the typical nucleus diameter in the nucleus stain, and µm <-> pixels.

The estimate needs no size to start from: the nucleus stain is smoothed lightly and thresholded
(Otsu); for each blob the largest inscribed circle (twice the peak of the distance transform) is a
nucleus diameter even where two nuclei touch, and the median over the blobs' pixels (so weighted by
area: hundreds of specks of noise or JPEG blocks do not outvote a few real nuclei) is the estimate.
Blobs too small to be nuclei (noise, debris) are left out.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .errors import DinolocError

#: Blobs whose inscribed diameter is below this many pixels are noise or debris, not nuclei.
SMALLEST_NUCLEUS = 5.0
#: A round nucleus's equivalent diameter over its inscribed diameter is 1; real outlines are a bit
#: irregular, so the inscribed circle underestimates slightly (measured on synthetic and NF1 nuclei).
INSCRIBED_TO_EQUIVALENT = 1.1
#: Cells are grown up to this many nucleus diameters across unless a cell diameter is given.
CELL_PER_NUCLEUS = 2.0
#: Pixels used for the estimate at most: larger images are sampled by a centred window.
ESTIMATE_WINDOW = 2048


def estimate_nucleus_diameter(nucleus: np.ndarray) -> float | None:
    """Typical nucleus diameter in pixels, or None when the stain shows no nucleus-like blobs."""
    from skimage.filters import threshold_otsu

    nucleus = np.asarray(nucleus, np.float32)
    nucleus = nucleus[tuple(_centre(n) for n in nucleus.shape)]
    smooth = ndi.gaussian_filter(nucleus, 1.5)
    if smooth.max() <= smooth.min():
        return None
    mask = ndi.binary_fill_holes(ndi.binary_opening(smooth > threshold_otsu(smooth)))
    distance = ndi.distance_transform_edt(mask)
    blobs, count = ndi.label(mask)
    if count == 0:
        return None
    peaks = 2 * np.asarray(ndi.maximum(distance, blobs, np.arange(0, count + 1)))
    per_pixel = peaks[blobs[mask]]  # weighted by area: specks of noise or JPEG blocks hardly count
    per_pixel = per_pixel[per_pixel >= SMALLEST_NUCLEUS]
    if len(per_pixel) == 0:
        return None
    return float(np.median(per_pixel) * INSCRIBED_TO_EQUIVALENT)


def _centre(n: int) -> slice:
    start = max(0, (n - ESTIMATE_WINDOW) // 2)
    return slice(start, start + ESTIMATE_WINDOW)


def to_pixels(value_um: float | None, pixel_size: float | None, what: str) -> float | None:
    """A size in µm as pixels; a µm size needs the pixel size."""
    if value_um is None:
        return None
    if not pixel_size:
        raise DinolocError(f"The {what} is given in µm but the pixel size is not: give --pixel-size (µm per pixel).")
    if value_um <= 0 or pixel_size <= 0:
        raise DinolocError(f"The {what} and the pixel size must be positive (got {value_um} µm, {pixel_size} µm/px).")
    return float(value_um) / float(pixel_size)
