"""Planning the tiles of a screen's very large images, on the client, before any task runs.

What every tile of one image must share is decided here, once, and recorded in the run manifest:

- the intensity scaling (the 0.1 / 99.9 percentiles of a strided sample of the whole plane, as an untiled
  image is scaled), so a cell is scaled the same whichever tile it falls in;
- the nucleus size, when not given: measured on the centred window of the nucleus stain that an untiled
  image is measured on, so every tile segments with the same sizes;
- the overlap, from those sizes and the crop window (``_tiles.overlap_for``).

Only the file's header, that strided sample and that window are read (lazily where the format allows);
an image that fits one tile is left to the ordinary one-task path, and so is one whose header cannot be
read (its task then says why).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from ..errors import DinolocError
from ._inputs import ScreenImage
from ._tiles import Tile, needs_tiles, overlap_for, tile_key, tile_layout


@dataclass
class ImageTile:
    """One task of a tiled image: its tile, its own shard."""

    image: ScreenImage
    tile: Tile

    @property
    def key(self) -> str:
        return tile_key(self.image.key, self.tile.index)

    @property
    def job(self):
        return self.image.job


def tasks_of(images) -> list:
    """The tasks of the screen's images: each untiled image one, each tile of a tiled image one."""
    tasks: list = []
    for image in images:
        if image.tiles:
            tasks += [ImageTile(image, Tile.from_dict(t)) for t in image.tiles["tiles"]]
        else:
            tasks.append(image)
    return tasks


def plan_tiles(images, options, tile: int, embed=None) -> int:
    """Give every image larger than ``tile`` its plan (``ScreenImage.tiles``); returns how many were tiled.
    ``embed``: the embedding settings the tasks will use (a model's own for predict)."""
    tiled = 0
    for image in images:
        image.tiles = plan_image(image, options, tile, embed) if tile else None
        tiled += image.tiles is not None
    return tiled


def plan_image(image: ScreenImage, options, tile: int, embed=None) -> Optional[dict]:
    from ..images import resolve_stains
    from ..images._regions import declared_shape, open_lazy

    try:
        if not needs_tiles(declared_shape(image.job.source, options.channel_axis), tile):
            return None
        lazy = open_lazy(image.job.source, options.channel_axis)
        stains = resolve_stains(options.stains or lazy.default_stains or (), lazy.n_channels, lazy.name)
        limits = scaling_limits(lazy)
        params, notes = measured_sizes(lazy, stains, limits, options.segmentation, image.job.labels is not None)
    except (DinolocError, OSError, ValueError):
        return None  # unreadable, or stains to be named: the ordinary task reads it and says what is wrong
    overlap = overlap_for(params.cell_px, crop_reach(embed or options.embed, params.cell_px))
    tiles = tile_layout(lazy.shape, tile, overlap)
    notes.append(f"{lazy.name}: {lazy.shape[0]} × {lazy.shape[1]} px, cut into {len(tiles)} tiles of at most {tile} px "
                 f"overlapping by {overlap} px.")
    return {"shape": list(lazy.shape), "tile": tile, "overlap": overlap, "limits": limits,
            "nucleus_diameter": params.nucleus_diameter, "cell_diameter": params.cell_diameter, "notes": notes,
            "tiles": [t.describe() for t in tiles]}


def scaling_limits(lazy) -> Optional[list]:
    """Per channel (low, high) as ``images.scale_by_percentiles`` finds them on the whole plane; None for 8-bit
    and boolean images (scaled by their type, not their content)."""
    from ..images._image import percentile_limits, sample_slices

    if lazy.dtype in (np.uint8, np.bool_):
        return None
    sample = lazy.sample(*sample_slices(lazy.shape))
    limits = []
    for channel, pixels in enumerate(sample):
        low, high = percentile_limits(pixels)
        if high <= low:  # sparse signal: as an untiled image, up to the channel's brightest pixel
            high = lazy.channel_max(channel)
        limits.append([low, high])
    return limits


def scaled(pixels: np.ndarray, limits: Optional[list]) -> np.ndarray:
    """(C, Y, X) pixels as stored -> float32 in [0, 1], with the image's own limits."""
    from ..images._image import scale_channels, scale_with_limits

    if limits is None:
        return scale_channels(pixels)
    return np.stack([scale_with_limits(c, low, high) for c, (low, high) in zip(pixels, limits)]).astype(np.float32)


def measured_sizes(lazy, stains, limits, segmentation, has_labels: bool):
    """The segmentation settings every tile uses: the nucleus size measured once, as an untiled image's."""
    from ..segmentation import SegmentationParams
    from ..sizes import ESTIMATE_WINDOW
    from ..stains import NUCLEUS, channel_of

    params = segmentation or SegmentationParams()
    nucleus = channel_of(NUCLEUS, stains)
    if has_labels or params.nucleus_diameter is not None or nucleus is None:
        return params, []
    height, width = lazy.shape
    top, left = max(0, (height - ESTIMATE_WINDOW) // 2), max(0, (width - ESTIMATE_WINDOW) // 2)
    window = lazy.region(top, min(top + ESTIMATE_WINDOW, height), left, min(left + ESTIMATE_WINDOW, width))
    params, notes = params.measured(scaled(window, limits)[nucleus])
    return params, [f"{lazy.name}: {n}" for n in notes]


def crop_reach(embed, cell_px: float) -> float:
    """How far a cell's crop reaches from its centroid: half the fixed window, or half of ``crop_cells``
    cell diameters (the window is ``crop_cells`` median cell sizes; the largest cell bounds the median)."""
    from ..embedding import EmbedSettings

    embed = embed or EmbedSettings()
    return embed.crop_size / 2 if embed.crop_size else embed.crop_cells * cell_px / 2


def tile_segmentation(plan: dict, segmentation):
    """The settings a tile segments with: the plan's sizes, cut cells kept (the tile decides which it owns)."""
    from ..segmentation import SegmentationParams

    params = segmentation or SegmentationParams()
    return replace(params, nucleus_diameter=plan["nucleus_diameter"], cell_diameter=plan["cell_diameter"],
                   keep_border_cells=True)
