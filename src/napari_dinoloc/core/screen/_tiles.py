"""Tiles of a very large image: where they lie, how wide their overlap is, and which tile owns each cell.

The plane is cut into *cores* that abut exactly (a grid, balanced so no tile is a sliver); each tile is
its core grown by half the overlap on its inner sides (sides that face another tile), clipped to the
image. A cell belongs to the tile whose core holds its centroid, so every cell is counted once.

Cell ids: a tiled image's cell ``label`` is ``tile * TILE_LABELS + its number within the tile`` (tiles
numbered from 0, row by row), unique in the image and the same every time the tile is computed, whatever
the other tiles did (a resumed run recomputes one tile and keeps the others' ids).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .. import defaults
from ..errors import DinolocError

#: Tile side, in pixels, above which an image is cut (``--tile``; 0: never).
DEFAULT_TILE = defaults.SCREEN_TILE
#: Cell ids per tile: label = tile * TILE_LABELS + the cell's number in the tile.
TILE_LABELS = 1_000_000


@dataclass(frozen=True)
class Tile:
    index: int                      # row by row, from 0
    top: int                        # the tile as read (core + overlap on inner sides), pixels of the image
    bottom: int
    left: int
    right: int
    core: tuple                     # (top, bottom, left, right): the cells whose centroid lies here are its own

    @property
    def shape(self) -> tuple[int, int]:
        return self.bottom - self.top, self.right - self.left

    def describe(self) -> dict:
        return {**asdict(self), "core": list(self.core)}

    @classmethod
    def from_dict(cls, item: dict) -> "Tile":
        return cls(int(item["index"]), int(item["top"]), int(item["bottom"]), int(item["left"]), int(item["right"]),
                   tuple(int(v) for v in item["core"]))


def overlap_for(cell_diameter: float, crop_reach: float = 0.0) -> int:
    """The overlap between neighbouring tiles, in pixels (even).

    Why 2x the largest cell diameter: a cell owned by a tile has its centroid in the core, at least half
    the overlap (one diameter) from the tile's inner edge, and no part of a cell is farther than one
    diameter from its centroid, so the cell lies whole inside the tile, and so do its neighbours' outlines
    that shape it in the watershed. ``crop_reach`` (half the crop window) widens it when the crops reach
    farther than a cell, so a cell's crop is cut from the tile as it would be from the whole image."""
    half = max(float(cell_diameter), float(crop_reach))
    return 2 * int(math.ceil(half))


def tile_layout(shape: tuple[int, int], tile: int, overlap: int) -> list[Tile]:
    """The tiles of an image of ``shape`` (Y, X): none larger than ``tile`` on a side, one tile along an
    axis the image does not exceed."""
    if tile < 2 * overlap:  # smaller: cores thinner than the overlap, most of each tile's work thrown away
        raise DinolocError(f"Tiles of {tile} px cannot hold their overlap of {overlap} px (twice the largest cell, "
                           f"for whole cells): give a larger --tile (at least {2 * overlap}), or --tile 0 to never tile.")
    ys, xs = (_cores(int(n), tile, overlap) for n in shape)
    half = overlap // 2
    tiles = []
    for (ct, cb) in ys:
        for (cl, cr) in xs:
            top = max(ct - half, 0) if ct > 0 else 0  # a core near the edge: the tile reaches the edge
            left = max(cl - half, 0) if cl > 0 else 0
            bottom = min(cb + half, shape[0]) if cb < shape[0] else cb
            right = min(cr + half, shape[1]) if cr < shape[1] else cr
            tiles.append(Tile(len(tiles), top, bottom, left, right, (ct, cb, cl, cr)))
    return tiles


def _cores(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Abutting core intervals of one axis. An inner tile is its core plus the whole overlap, so cores are
    at most ``tile - overlap``; the count is the fewest that allow it, and the cores are evened out."""
    if size <= tile:
        return [(0, size)]
    count = math.ceil(size / (tile - overlap))
    bounds = [k * size // count for k in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def tile_key(image_key: str, index: int) -> str:
    return f"{image_key}-tile{index:03d}"


def shard_keys(item: dict) -> list[str]:
    """The shard keys of one input as the run manifest records it: its tiles', or its own."""
    tiles = item.get("tiles")
    if not tiles:
        return [item["key"]]
    return [tile_key(item["key"], int(t["index"])) for t in tiles["tiles"]]


def needs_tiles(shape: tuple[int, int], tile: int) -> bool:
    return bool(tile) and max(shape) > tile


def owned_cells(labels: np.ndarray, tile: Tile, image_shape: tuple[int, int], drop_image_border: bool) -> np.ndarray:
    """The tile's own cells, numbered 1..N (label order kept): centroid in the core, not cut by an inner edge
    (a cut cell there is whole in the neighbouring tile, which owns it), and, with ``drop_image_border``,
    not touching the image's own border (as an untiled image drops them)."""
    from ..cell_labels import CellTable, relabel

    labels = np.asarray(labels)
    table = CellTable.from_labels(labels)
    ct, cb, cl, cr = tile.core
    y = table.centroid_y + tile.top
    x = table.centroid_x + tile.left
    keep = (y >= ct) & (y < cb) & (x >= cl) & (x < cr)
    edges = {"top": tile.top > 0 or drop_image_border, "bottom": tile.bottom < image_shape[0] or drop_image_border,
             "left": tile.left > 0 or drop_image_border, "right": tile.right < image_shape[1] or drop_image_border}
    box = table.bbox
    height, width = labels.shape
    cut = ((edges["top"] & (box[:, 0] == 0)) | (edges["left"] & (box[:, 1] == 0))
           | (edges["bottom"] & (box[:, 2] == height)) | (edges["right"] & (box[:, 3] == width)))
    kept = table.label[keep & ~cut]
    lookup = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int32)
    lookup[kept] = kept
    return relabel(lookup[labels])


def to_image(rows: list[dict], labels: np.ndarray, tile: Tile) -> tuple[list[dict], np.ndarray]:
    """The tile's per-cell rows and embedding labels in the image's coordinates and cell ids."""
    if len(labels) and int(np.max(labels)) >= TILE_LABELS:
        raise DinolocError(f"A tile holds more than {TILE_LABELS - 1} cells: give a smaller --tile.")
    offset = tile.index * TILE_LABELS
    moved = [{**row, "label": int(row["label"]) + offset, "centroid_y": round(float(row["centroid_y"]) + tile.top, 2),
              "centroid_x": round(float(row["centroid_x"]) + tile.left, 2)} for row in rows]
    return moved, np.asarray(labels, np.int64) + offset
