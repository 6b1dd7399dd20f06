"""Intensity features: per-stain statistics, the protein's radial distribution, protein-nucleus relations.

The radial distribution follows CellProfiler's MeasureObjectIntensityDistribution: every pixel gets a
normalised distance r = d_centre / (d_centre + d_border) (0 at the centre, 1 at the cell border), the
cell is cut into RINGS equal steps of r, and each ring reports the fraction of the cell's protein in it
(FracAtD) and that fraction over the ring's share of the area (MeanFrac: 1 = as dense as on average).
It is measured twice: from the nucleus centre (the cell centre when no nucleus is found) and from the
nucleus border (pixels inside the nucleus are their own compartment).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .cell import CellPatch

PERCENTILES = (10, 25, 50, 75, 90, 99)
STAT_NAMES = ("mean", "std", *(f"p{q}" for q in PERCENTILES), "integrated")
RINGS = 4
EPS = 1e-6

PROTEIN_EXTRA_NAMES = ("protein_cv", "protein_p99_over_p50", "protein_nucleus_pearson", "protein_in_nucleus_fraction",
                       "protein_log_nucleus_to_cytoplasm")
RADIAL_NAMES = (
    *(f"radial_centre_frac_ring{k + 1}" for k in range(RINGS)),
    *(f"radial_centre_meanfrac_ring{k + 1}" for k in range(RINGS)),
    "radial_centre_mean_r",
    *(f"radial_border_frac_ring{k + 1}" for k in range(RINGS)),
    *(f"radial_border_meanfrac_ring{k + 1}" for k in range(RINGS)),
    "radial_border_mean_r",
)


def channel_names(stains) -> list[str]:
    """One prefix per channel: the stain, numbered when several channels share it ('other1', 'other2')."""
    names = []
    for i, stain in enumerate(stains):
        repeated = sum(s == stain for s in stains) > 1
        names.append(f"{stain}{sum(s == stain for s in stains[:i]) + 1}" if repeated else stain)
    return names


def stat_names(stains) -> list[str]:
    return [f"{prefix}_{stat}" for prefix in channel_names(stains) for stat in STAT_NAMES]


def channel_stats(patch: CellPatch) -> np.ndarray:
    """Mean, std, percentiles and integrated intensity of every channel inside the cell."""
    values = patch.channels[:, patch.mask]  # (C, area)
    percentiles = np.percentile(values, PERCENTILES, axis=1).T  # (C, len(PERCENTILES))
    return np.column_stack([values.mean(axis=1), values.std(axis=1), percentiles, values.sum(axis=1)]).ravel()


def protein_extras(patch: CellPatch, protein: int, nucleus_stain: int | None) -> np.ndarray:
    values = patch.channels[protein][patch.mask]
    mean = values.mean()
    p50, p99 = np.percentile(values, (50, 99))
    pearson = 0.0
    if nucleus_stain is not None:
        other = patch.channels[nucleus_stain][patch.mask]
        if values.std() > EPS and other.std() > EPS:
            pearson = float(np.corrcoef(values, other)[0, 1])
    in_nucleus, log_ratio = 0.0, 0.0
    if patch.has_nucleus:
        nuclear = patch.channels[protein][patch.nucleus]
        cytoplasm = patch.channels[protein][patch.mask & ~patch.nucleus]
        in_nucleus = nuclear.sum() / max(values.sum(), EPS)
        if cytoplasm.size:
            log_ratio = float(np.log((nuclear.mean() + 1e-3) / (cytoplasm.mean() + 1e-3)))
    return np.array([values.std() / max(mean, EPS), p99 / max(p50, EPS), pearson, in_nucleus, log_ratio])


def radial_distribution(patch: CellPatch, protein: int) -> np.ndarray:
    mask, nucleus = patch.mask, patch.nucleus
    # distance to the cell border: pad so that a cell cut by the box edge still has a border there
    to_border = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    intensity = patch.channels[protein]
    yy, xx = np.nonzero(mask)
    centre_of = nucleus if patch.has_nucleus else mask
    cy, cx = (c.mean() for c in np.nonzero(centre_of))
    from_centre = np.hypot(yy - cy, xx - cx)
    border = to_border[yy, xx]
    values = intensity[yy, xx]
    total = max(values.sum(), EPS)
    centre = rings(from_centre / (from_centre + border + EPS), values, total)
    if patch.has_nucleus:
        outside = ~nucleus[yy, xx]
        from_nucleus = ndi.distance_transform_edt(~nucleus)[yy, xx][outside]
        rim = rings(from_nucleus / (from_nucleus + border[outside] + EPS), values[outside], total,
                    area=len(values))
    else:
        rim = np.zeros(2 * RINGS + 1)
    return np.concatenate([centre, rim])


def rings(r: np.ndarray, values: np.ndarray, total: float, area: int | None = None) -> np.ndarray:
    """FracAtD and MeanFrac of RINGS equal steps of r in [0, 1], and the intensity-weighted mean r."""
    if r.size == 0:
        return np.zeros(2 * RINGS + 1)
    ring = np.minimum((r * RINGS).astype(np.int64), RINGS - 1)
    fraction = np.bincount(ring, weights=values, minlength=RINGS) / total
    share = np.bincount(ring, minlength=RINGS) / (area or len(r))
    mean_fraction = np.divide(fraction, share, out=np.zeros(RINGS), where=share > 0)
    mean_r = float((r * values).sum() / max(values.sum(), EPS))
    return np.concatenate([fraction, mean_fraction, [mean_r]])
