"""Finding cells: nuclei from the nucleus stain, cells grown from them on a cell stain, never on the protein.

Classical and fast (no deep model): smooth, threshold, split touching nuclei by the distance
transform, then a seeded watershed on the cell stain. The protein is never used for outlines: a
cell's outline must not depend on the localization to be predicted. Without a cell stain, cells are
the nuclei grown by a fixed ring (see :data:`RING_PER_NUCLEUS`); images with only a nucleus stain give
the nuclei as the cells. Sizes are measured from the nucleus stain unless given (``core.sizes``).
Users with better masks (e.g. Cellpose) give a label image instead; :func:`prepare_labels` checks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from .cell_labels import CellTable, drop_border_cells, match_cells, prepare_labels, relabel, remove_small
from .errors import DinolocError, NoCellsFound
from .progress import CancelToken, ProgressCallback, check_cancel, report
from .sizes import CELL_PER_NUCLEUS, estimate_nucleus_diameter
from .stains import ER, MICROTUBULES, NUCLEUS, PROTEIN

if TYPE_CHECKING:
    from .images import CellImage

__all__ = ["CellTable", "Segmentation", "SegmentationParams", "match_cells", "prepare_labels", "relabel",
           "remove_small", "segment", "segment_cells", "segment_nuclei"]

#: Cell stains tried, in order, when none is chosen; then any other stain that is not protein or nucleus.
CELL_STAINS = (MICROTUBULES, ER)
#: ``cell_stain`` value: grow cells on a foreground made from all non-protein stains together.
ALL_STAINS = "all"
#: ``cell_stain`` value: no cell stain; the documented ring around each nucleus.
NO_CELL_STAIN = "none"
#: Without a cell stain, cells are the nuclei grown by this many nucleus diameters (a ring ~ the
#: perinuclear cytoplasm): an honest stand-in for the cell, made without the protein.
RING_PER_NUCLEUS = 0.5
#: A pixel is cytoplasm when it is this many noise levels above the background.
BACKGROUND_NOISE_LEVELS = 4.0
#: Weight of the distance to the nucleus against intensity in the watershed, per nucleus diameter:
#: without it a bright neighbour floods along a dim cell's bright membrane.
COMPACTNESS_PER_DIAMETER = 0.28
#: Nuclei must stand this many noise levels above the rest of the nucleus channel (Otsu splits
#: pure noise at ~2.6; real nucleus stains measure 5 to 50).
MIN_NUCLEUS_CONTRAST = 3.5
#: Cells grown on a cell stain cover at least this many times the nuclei's area (real nuclei take a
#: quarter to a half of a cell); less suggests the "nucleus" channel holds a cell-wide stain.
NUCLEI_FILL_CELLS = 1.3
SEGMENTERS = ("builtin", "cellpose")
#: Size used where a size is needed but none was given nor measured.
FALLBACK_NUCLEUS_DIAMETER = 28.0
#: Nuclei covering more of the image than this are more likely another stain (swapped channels).
MAX_NUCLEUS_COVER = 0.6


@dataclass(frozen=True)
class SegmentationParams:
    nucleus_diameter: float | None = None  # pixels; None: measured from the nucleus stain
    cell_diameter: float | None = None  # pixels; None: CELL_PER_NUCLEUS nucleus diameters
    min_cell_area: int | None = None  # default derived from nucleus_diameter
    cytoplasm_stain: str | None = None  # the cell stain; None: microtubules, er, any other; "all"; "none"
    keep_border_cells: bool = False  # cells cut by the image border are dropped unless kept
    segmenter: str = "builtin"  # "builtin" (watershed from the nuclei) or "cellpose" (optional package)

    def __post_init__(self) -> None:
        if self.segmenter not in SEGMENTERS:
            raise DinolocError(f"Unknown segmenter {self.segmenter!r}: choose one of {', '.join(SEGMENTERS)}.")
        if self.nucleus_diameter is not None and not self.nucleus_diameter > 2:
            raise DinolocError(f"The nucleus diameter must be more than 2 pixels (got {self.nucleus_diameter}).")
        if self.cytoplasm_stain == PROTEIN:
            raise DinolocError("The protein cannot be the cell stain: a cell's outline must not depend on the "
                               "localization being predicted. Choose microtubules, er, another stain, or none.")
        if self.cell_diameter is not None and not self.cell_diameter >= self.nucleus_px:
            raise DinolocError(
                f"The cell diameter ({self.cell_diameter} px) must be at least the nucleus diameter "
                f"({self.nucleus_px} px)."
            )

    @property
    def nucleus_px(self) -> float:
        return float(self.nucleus_diameter) if self.nucleus_diameter is not None else FALLBACK_NUCLEUS_DIAMETER

    @property
    def cell_px(self) -> float:
        return float(self.cell_diameter) if self.cell_diameter is not None else CELL_PER_NUCLEUS * self.nucleus_px

    @property
    def min_area(self) -> int:
        """Smallest cell kept: a quarter of a typical nucleus (debris and fragments are smaller)."""
        if self.min_cell_area is not None:
            return int(self.min_cell_area)
        return max(4, int(0.25 * np.pi * (self.nucleus_px / 2) ** 2))

    def measured(self, nucleus: np.ndarray | None) -> tuple["SegmentationParams", list[str]]:
        """These params with the nucleus diameter measured from ``nucleus`` when not given, and a note saying so."""
        if self.nucleus_diameter is not None or nucleus is None:
            return self, []
        estimate = estimate_nucleus_diameter(nucleus)
        if estimate is None or estimate <= 2:
            return replace(self, nucleus_diameter=FALLBACK_NUCLEUS_DIAMETER), [
                f"warning: could not measure the nucleus size; using {FALLBACK_NUCLEUS_DIAMETER:g} px "
                "(give --nucleus-diameter)."]
        cell = self.cell_diameter if self.cell_diameter and self.cell_diameter >= estimate else None
        params = replace(self, nucleus_diameter=round(estimate, 1), cell_diameter=cell)
        return params, [f"nucleus diameter measured: {params.nucleus_px:.0f} px, cells up to {params.cell_px:.0f} px "
                        "across (give --nucleus-diameter / --cell-diameter to override)."]


@dataclass
class Segmentation:
    """What segmentation found: cells, their nuclei, the sizes used, and notes for the user."""

    cells: np.ndarray  # (Y, X) int32 1..N
    nuclei: np.ndarray  # (Y, X) int32, nucleus of cell k labelled k where kept
    params: SegmentationParams  # with the sizes actually used
    cell_stain: str | None  # the stain the outlines come from; None: nuclei or the ring
    border_cells_dropped: int = 0
    notes: list[str] = field(default_factory=list)


def segment_cells(
    image: "CellImage", params: SegmentationParams = SegmentationParams(), progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> np.ndarray:
    """(Y, X) int32 cell labels 1..N (0 = background), one cell per nucleus found."""
    return segment(image, params, progress, cancel).cells


def segment(image: "CellImage", params: SegmentationParams = SegmentationParams(),
            progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> Segmentation:
    """Nuclei, then cells grown from them on the cell stain; border cells dropped unless kept; notes."""
    nucleus = image.channel(NUCLEUS)
    if nucleus is None:
        raise DinolocError(
            f"{image.name} has no nucleus channel, which is needed to find cells: assign one "
            "(e.g. 'protein=1,nucleus=0'), or give a label image of the cells instead."
        )
    report(progress, 0, 3, "Finding nuclei")
    params, notes = params.measured(nucleus)
    nuclei = segment_nuclei(nucleus, params)
    if nuclei.max() == 0:
        raise no_cells_found(image.name, params, "nuclei", nucleus)
    notes += nuclei_warnings(nuclei, params)
    check_cancel(cancel)
    report(progress, 1, 3, "Growing cells from nuclei")
    stain = cell_stain_of(image, params)
    if params.segmenter == "cellpose":
        from .cellpose_backend import cellpose_cells

        cell_plane = None if stain in (None, NO_CELL_STAIN, ALL_STAINS) else image.channel(stain)
        cells, note = cellpose_cells(cell_plane, nucleus, params.cell_px), "cells found by Cellpose."
    else:
        cells, note = grow_from_nuclei(image, nuclei, stain, params)
    notes += [note] if note else []
    if stain not in (None, NO_CELL_STAIN) and (cells > 0).sum() < NUCLEI_FILL_CELLS * (nuclei > 0).sum():
        notes.append(f"warning: the nuclei fill their cells (the {stain} outlines hardly reach beyond them): the "
                     "nucleus channel may hold another stain (channels swapped?); check which channel is the nucleus (e.g. --channels "
                     "protein=1,nucleus=0).")
    check_cancel(cancel)
    report(progress, 2, 3, "Cleaning up cells")
    cells = remove_small(cells, params.min_area)
    dropped = 0
    if not params.keep_border_cells:
        cells, dropped = drop_border_cells(cells)
        if dropped:
            notes.append(f"{dropped} cell(s) touching the image border dropped (--keep-border-cells keeps them).")
    if cells.max() == 0:
        raise no_cells_found(image.name, params, "cells")
    report(progress, 3, 3, "Cells found")
    own_nuclei = np.where(nuclei > 0, cells, 0).astype(np.int32)
    return Segmentation(cells, own_nuclei, params, None if stain in (None, NO_CELL_STAIN) else stain, dropped, notes)


#: Side of the window a preview segments, in pixels: a few seconds at most on a laptop CPU.
PREVIEW_SIZE = 512


def segment_region(image: "CellImage", params: SegmentationParams, centre: tuple[float, float],
                   size: int = PREVIEW_SIZE) -> tuple[Segmentation, tuple[int, int]]:
    """A quick look: segmentation of a ``size`` window around ``centre`` (y, x), and the window's (top, left).

    Sizes are measured on the whole nucleus stain first, so the preview uses what the full run will."""
    from .images import CellImage

    params, notes = params.measured(image.channel(NUCLEUS))
    height, width = image.shape
    top = int(np.clip(round(centre[0] - size / 2), 0, max(0, height - size)))
    left = int(np.clip(round(centre[1] - size / 2), 0, max(0, width - size)))
    window = image.data[:, top:top + size, left:left + size]
    part = CellImage(np.ascontiguousarray(window), image.stains, image.name, f"{image.content_hash}@{top},{left}")
    found = segment(part, params)
    found.notes[:0] = notes
    return found, (top, left)


def grow_from_nuclei(image, nuclei: np.ndarray, stain: str | None, params: SegmentationParams):
    """(cells, note): on the cell stain, on all non-protein stains, as a ring, or the nuclei themselves."""
    others = [s for s in image.stains if s not in (PROTEIN, NUCLEUS)]
    if stain == ALL_STAINS:
        return grow_cells(nuclei, non_protein_foreground(image), params), None
    if stain not in (None, NO_CELL_STAIN):
        return grow_cells(nuclei, image.channel(stain), params), None
    if PROTEIN not in image.stains and not others:
        return nuclei, "only a nucleus stain: the cells are the nuclei."
    from skimage.segmentation import expand_labels

    ring = RING_PER_NUCLEUS * params.nucleus_px
    return (expand_labels(nuclei, distance=ring).astype(np.int32),
            f"no cell stain: cells are the nuclei grown by {ring:.0f} px (a ring); give --cell-stain for true outlines.")


def cell_stain_of(image: "CellImage", params: SegmentationParams) -> str | None:
    """The stain cell outlines come from: the user's, else microtubules, er, then any non-protein, non-nucleus stain."""
    chosen = params.cytoplasm_stain
    if chosen in (ALL_STAINS, NO_CELL_STAIN):
        return chosen
    if chosen is not None:
        if image.channel(chosen) is None:
            raise DinolocError(
                f"{image.name} has no {chosen!r} channel to grow cells on: choose one of "
                f"its stains ({', '.join(image.stains)}), or leave the choice automatic."
            )
        return chosen
    candidates = [*CELL_STAINS, *(s for s in image.stains if s not in (PROTEIN, NUCLEUS, *CELL_STAINS))]
    return next((s for s in candidates if image.channel(s) is not None), None)


def non_protein_foreground(image: "CellImage") -> np.ndarray:
    """All stains but the protein, each scaled to its 99th percentile, taken pixel by pixel at their brightest."""
    planes = [image.data[i] for i, s in enumerate(image.stains) if s != PROTEIN]
    scaled = [p / (np.percentile(p, 99) + 1e-6) for p in planes]
    return np.clip(np.max(scaled, axis=0), 0, 1).astype(np.float32)


def nuclei_warnings(nuclei: np.ndarray, params: SegmentationParams) -> list[str]:
    """A warning when the nuclei found look like another stain's pattern (suspected swapped channels)."""
    cover = float((nuclei > 0).mean())
    count = int(nuclei.max())
    expected = nuclei.size / (np.pi * (params.nucleus_px / 2) ** 2)
    if cover > MAX_NUCLEUS_COVER or count > expected:
        return [f"warning: the nucleus channel gives {count} nuclei covering {cover:.0%} of the image, more than "
                "nuclei do: the channels may be swapped; check which channel is the nucleus (e.g. --channels "
                "protein=1,nucleus=0)."]
    return []


def no_cells_found(name: str, params: SegmentationParams, what: str, nucleus: np.ndarray | None = None) -> NoCellsFound:
    hint = ""
    if nucleus is not None and np.percentile(nucleus, 95) < 0.05:
        hint = " The nucleus channel is nearly dark: check that the right channel is assigned to the nucleus."
    elif nucleus is not None:
        hint = (" If the nucleus channel shows no clear nuclei, the channels may be swapped: check which channel is "
                "the nucleus (e.g. --channels protein=1,nucleus=0).")
    return NoCellsFound(
        f"No {what} found in {name} with a nucleus diameter of {params.nucleus_px:g} px and a cell "
        f"diameter of {params.cell_px:g} px. Measure a nucleus and a cell in the image (in pixels) and "
        "set those sizes (try half or double the current ones), or give a label image." + hint
    )


# ----------------------------------------------------------------------------------------------
# Nuclei
# ----------------------------------------------------------------------------------------------


def segment_nuclei(nucleus: np.ndarray, params: SegmentationParams) -> np.ndarray:
    """Nuclei as int32 labels: smooth, threshold, then split touching nuclei."""
    from skimage.filters import threshold_otsu

    nucleus = np.asarray(nucleus, np.float32)
    smooth = ndi.gaussian_filter(nucleus, sigma=max(1.0, params.nucleus_px / 14))
    if smooth.max() <= smooth.min():
        return np.zeros(nucleus.shape, np.int32)
    mask = smooth > threshold_otsu(smooth)
    if contrast(smooth, mask) < MIN_NUCLEUS_CONTRAST:
        return np.zeros(nucleus.shape, np.int32)  # noise only: no nuclei to find
    mask = ndi.binary_fill_holes(ndi.binary_opening(mask, iterations=1))
    nuclei = split_touching(mask, params.nucleus_px)
    return remove_small(nuclei, max(4, int(0.15 * np.pi * (params.nucleus_px / 2) ** 2)))


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


def grow_cells(nuclei: np.ndarray, cytoplasm: np.ndarray, params: SegmentationParams) -> np.ndarray:
    """Seeded watershed from the nuclei on the cytoplasm channel, within reach of a nucleus."""
    from skimage.segmentation import watershed

    reach = max(1.0, params.cell_px - params.nucleus_px)
    from_nucleus = ndi.distance_transform_edt(nuclei == 0)
    cytoplasm = np.asarray(cytoplasm, np.float32)
    # Light smoothing for the outline (heavier would swell every cell), more for the watershed.
    lightly = ndi.gaussian_filter(cytoplasm, sigma=max(1.0, params.nucleus_px / 28))
    foreground = (cytoplasm_foreground(lightly) & (from_nucleus <= reach)) | (nuclei > 0)
    landscape = watershed_landscape(cytoplasm, foreground, params)
    # Nuclei are the sources: each floods its own bright cytoplasm before a neighbour can.
    landscape[nuclei > 0] = landscape.min()
    cells = watershed(landscape, nuclei, mask=foreground, compactness=COMPACTNESS_PER_DIAMETER / params.nucleus_px)
    return keep_nucleus_connected(cells.astype(np.int32))


def watershed_landscape(cytoplasm: np.ndarray, foreground: np.ndarray, params: SegmentationParams) -> np.ndarray:
    """Bright cytoplasm is low ground (about -1), background high (0)."""
    smooth = ndi.gaussian_filter(cytoplasm, sigma=max(1.0, params.nucleus_px / 14))
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


