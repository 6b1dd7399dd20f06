"""Shape of a cell and of its nucleus, from image moments (no convex hull beyond solidity's)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .cell import CellPatch

SHAPE_NAMES = ("area", "perimeter", "eccentricity", "solidity", "extent", "major_axis", "minor_axis",
               "nucleus_area_ratio", "nucleus_eccentricity", "has_nucleus")


def shape_features(patch: CellPatch) -> np.ndarray:
    from skimage.measure import perimeter

    mask = patch.mask
    area = float(mask.sum())
    eccentricity, major, minor = ellipse(mask)
    ys, xs = np.nonzero(mask)
    extent = area / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    nucleus_ratio, nucleus_eccentricity = 0.0, 0.0
    if patch.has_nucleus:
        nucleus_ratio = patch.nucleus.sum() / area
        nucleus_eccentricity = ellipse(patch.nucleus)[0]
    return np.array([area, perimeter(mask), eccentricity, min(area / hull_area(mask), 1.0), extent, major, minor,
                     nucleus_ratio, nucleus_eccentricity, float(patch.has_nucleus)])


def hull_area(mask: np.ndarray) -> float:
    """Area of the convex hull of the cell's pixels (their corners, as skimage's convex_hull_image)."""
    from scipy.spatial import ConvexHull, QhullError

    edge = mask & ~ndi.binary_erosion(mask, border_value=0)
    ys, xs = np.nonzero(edge)
    corners = np.concatenate([np.stack([ys + dy, xs + dx], axis=1) for dy in (-0.5, 0.5) for dx in (-0.5, 0.5)])
    try:
        return float(ConvexHull(corners).volume)  # in 2-D the "volume" is the area
    except QhullError:  # a line of pixels: no 2-D hull
        return float(mask.sum())


def ellipse(mask: np.ndarray) -> tuple[float, float, float]:
    """Eccentricity and major/minor axis lengths of the ellipse with the same second moments."""
    ys, xs = np.nonzero(mask)
    if len(ys) < 2:
        return 0.0, float(len(ys)), float(len(ys))
    cov = np.cov(np.stack([ys, xs]).astype(np.float64), bias=True)
    small, large = np.clip(np.linalg.eigvalsh(cov), 0.0, None)
    eccentricity = float(np.sqrt(1 - small / large)) if large > 0 else 0.0
    return eccentricity, 4 * np.sqrt(large), 4 * np.sqrt(small)
