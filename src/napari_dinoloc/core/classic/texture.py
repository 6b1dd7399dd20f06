"""Texture of the protein inside a cell: Haralick (grey-level co-occurrence), local binary
patterns, granularity (white top-hat spectrum) and puncta.

Intensities are rescaled per cell (between its 1st and 99th percentile) before the co-occurrence
matrix and the LBP, so texture does not follow the cell's brightness.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .cell import CellPatch

GLCM_LEVELS = 32
GLCM_DISTANCES = (1, 2, 4)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
HARALICK = ("contrast", "homogeneity", "energy", "correlation")
LBP_POINTS, LBP_RADIUS = 8, 1
LBP_BINS = LBP_POINTS + 2  # 'uniform' LBP: P + 1 uniform codes and one for all the others
TOPHAT_RADII = (1, 2, 4)
PUNCTA_RADIUS = 2
#: A pixel is part of a punctum when the top-hat of the smoothed protein exceeds this many times the
#: cell's pixel noise (robust, from the residual of the smoothing): on synthetic fields this leaves
#: ~1 punctum per centrosome cell and ~20 per vesicle cell, and almost none on the ER network.
PUNCTA_NOISE_LEVELS = 5.0

TEXTURE_NAMES = (
    *(f"haralick_{prop}_d{d}" for d in GLCM_DISTANCES for prop in HARALICK),
    *(f"lbp_uniform_{code}" for code in range(LBP_BINS)),
    *(f"granularity_r{r}" for r in TOPHAT_RADII),
    "puncta_per_1000px", "puncta_area_fraction", "puncta_intensity_fraction",
)


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return yy ** 2 + xx ** 2 <= radius ** 2


_DISKS = {r: _disk(r) for r in TOPHAT_RADII}


def texture_features(patch: CellPatch, protein: int) -> np.ndarray:
    intensity = patch.channels[protein]
    return np.concatenate([haralick(intensity, patch.mask), lbp_histogram(intensity, patch.mask),
                           granularity(intensity, patch.mask)])


def rescaled(intensity: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The box scaled to [0, 1] between the cell's 1st and 99th percentile."""
    low, high = np.percentile(intensity[mask], (1, 99))
    return np.clip((intensity - low) / max(high - low, 1e-6), 0.0, 1.0)


def haralick(intensity: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Contrast, homogeneity, energy and correlation per distance, averaged over four directions.
    Grey level 0 marks pixels outside the cell; pairs that touch it are dropped."""
    from skimage.feature import graycomatrix, graycoprops

    levels = np.where(mask, 1 + np.round(rescaled(intensity, mask) * (GLCM_LEVELS - 2)), 0).astype(np.uint8)
    glcm = graycomatrix(levels, GLCM_DISTANCES, GLCM_ANGLES, levels=GLCM_LEVELS, symmetric=True)
    glcm[0, :] = 0
    glcm[:, 0] = 0
    with np.errstate(invalid="ignore", divide="ignore"):
        props = np.stack([graycoprops(glcm, prop).mean(axis=1) for prop in HARALICK], axis=1)  # (distances, props)
    return np.nan_to_num(props.ravel(), nan=0.0, posinf=0.0, neginf=0.0)


def lbp_histogram(intensity: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from skimage.feature import local_binary_pattern

    grey = np.round(rescaled(intensity, mask) * 255).astype(np.uint8)
    codes = local_binary_pattern(grey, LBP_POINTS, LBP_RADIUS, method="uniform").astype(np.int64)
    return np.bincount(codes[mask], minlength=LBP_BINS)[:LBP_BINS] / max(mask.sum(), 1)


def granularity(intensity: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Share of the protein in structures narrower than each radius (white top-hat), then puncta:
    local maxima of the top-hat of the lightly smoothed protein that stand well above the pixel noise."""
    total = max(float(intensity[mask].sum()), 1e-6)
    spectrum = [ndi.white_tophat(intensity, footprint=_DISKS[r])[mask].sum() / total for r in TOPHAT_RADII]
    smooth = ndi.gaussian_filter(intensity, 1.0)
    residual = (intensity - smooth)[mask]
    noise = max(1.4826 * float(np.median(np.abs(residual - np.median(residual)))), 1e-4)
    tophat = ndi.white_tophat(smooth, footprint=_DISKS[PUNCTA_RADIUS])
    spots = mask & (tophat > PUNCTA_NOISE_LEVELS * noise)
    peaks = spots & (tophat == ndi.maximum_filter(tophat, size=3))
    area = mask.sum()
    return np.array([*spectrum, 1000.0 * peaks.sum() / area, spots.sum() / area, tophat[spots].sum() / total])
