"""One tile of a very large image on a worker: read that region only, scale it as the whole image, find its
cells (segmented with the image's sizes, or from the label image's same region), keep the cells the tile owns,
embed (and predict) them, and write the tile's shard in the image's coordinates and cell ids."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np

from ..errors import Cancelled, DinolocError, NoCellsFound
from ._tasks import ShardResult, TaskSpec, embed_session, loaded_model, task_cache, written
from ._tiles import owned_cells, to_image


def run_tile(task, spec: TaskSpec, shard: str) -> ShardResult:
    """``task``: an ``ImageTile``. A tile without cells of its own writes an empty shard (the image is not
    skipped for it); a problem with the image itself comes back as skipped, as for a whole image."""
    from ..batch import tell
    from ..embedding import Embeddings
    from ..pipeline import Session

    notes: list = []
    result = ShardResult(task.key, notes=notes, pid=os.getpid())
    try:
        backbone, model, options = loaded_model(spec)
        options = replace(options, notify=notes.append)
        tell(options, task.image.tiles.get("notes", ()))
        image = tile_image(task, options)
        cells = tile_cells(task, image, options)
        if cells is None:
            empty = Embeddings(np.zeros(0, np.int64), np.zeros((0, 0), np.float32), {})
            return written(result, shard, image.name, [], empty)
        session = Session(cache=task_cache(spec))
        session.set_image(image)
        session.set_labels(cells)
        embed_session(session, backbone, model, options)
    except Cancelled:
        raise
    except DinolocError as exc:
        result.skipped = str(exc)
        return result
    rows, labels = to_image(session.rows(), session.embeddings.labels, task.tile)
    embeddings = Embeddings(labels, session.embeddings.vectors, session.embeddings.signature)
    return written(result, shard, image.name, rows, embeddings)


def tile_image(task, options):
    """The tile's ``CellImage``: its region only, scaled with the whole image's limits."""
    from ..files import hash_array
    from ..images import CellImage, check_finite, resolve_stains
    from ..images._regions import open_lazy
    from ._tile_plan import scaled

    lazy = open_lazy(task.job.source, options.channel_axis)
    tile = task.tile
    raw = lazy.region(tile.top, tile.bottom, tile.left, tile.right)
    check_finite(raw, lazy.name)
    stains = resolve_stains(options.stains or lazy.default_stains or (), raw.shape[0], lazy.name)
    return CellImage(scaled(raw, task.image.tiles["limits"]), stains, lazy.name, hash_array(raw), tuple(lazy.notes))


def tile_cells(task, image, options):
    """The tile's own cells (labels 1..N), or None when it has none."""
    from ..batch import tell
    from ..cell_labels import prepare_labels
    from ..segmentation import segment
    from ._tile_plan import tile_segmentation

    tile, plan = task.tile, task.image.tiles
    if task.job.labels is not None:
        from ..images._regions import open_lazy

        labels = open_lazy(task.job.labels).region(tile.top, tile.bottom, tile.left, tile.right)[0]
        if not labels.any():
            return None
        labels, drop_border = prepare_labels(labels, image.shape), False
    else:
        params = tile_segmentation(plan, options.segmentation)
        try:
            found = segment(image, params)
        except NoCellsFound:
            return None
        tell(options, (f"{image.name}: {note}" for note in found.notes))  # the same for every tile: said once
        labels = found.cells
        drop_border = not (options.segmentation and options.segmentation.keep_border_cells)
    owned = owned_cells(labels, tile, tuple(plan["shape"]), drop_border)
    return owned if owned.max() > 0 else None
