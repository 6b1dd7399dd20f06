"""Embedding the cells of an image, or the whole field, with the cache consulted first."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np

from ..backbones import LoadedBackbone
from ..crops import field_tile_origins, iter_cell_crops, iter_field_crops
from ..errors import DinolocError
from ..files import hash_array
from ..progress import CancelToken, ProgressCallback, report
from ..stains import validate_stains
from ._embedder import Embedder, run_batches
from ._settings import EmbedSettings, Embeddings
from ._signature import embedding_signature, result_signature


def embed_cells(image, labels: np.ndarray, backbone: LoadedBackbone, settings: EmbedSettings = EmbedSettings(),
                cache=None, progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                table=None) -> Embeddings:
    """One embedding per cell of ``labels`` (``table``: the CellTable of ``labels``, computed if not given).

    A feature extractor with its own ``embed_cells`` (the classic features) is handed the work."""
    if getattr(backbone, "is_classic", False):
        return backbone.embed_cells(image, labels, settings, cache=cache, progress=progress, cancel=cancel, table=table)
    settings = settings.resolved(backbone)
    stains = validate_stains(image.stains, image.data.shape[0], need_protein=False)
    if table is None:
        from ..segmentation import CellTable

        table = CellTable.from_labels(labels)
    window = settings.window_for(table, image.shape)
    key = embedding_signature("cells", image, hash_array(labels), backbone, settings, window=window)
    total = len(table.label)
    embedder = Embedder(backbone, settings)
    cached = _from_cache(cache, key, progress, total, np.asarray(table.label), embedder.output_dim(stains))
    if cached is not None:
        return cached
    batches = iter_cell_crops(image, labels, table, window, settings.mask_background, settings.batch_size)
    ids, vectors = run_batches(embedder, batches, stains, total, progress, cancel, "Embedding cells")
    result = Embeddings(ids, vectors, result_signature(key, embedder, vectors))
    _to_cache(cache, key, result)
    return result


def embed_field(image, backbone: LoadedBackbone, settings: EmbedSettings = EmbedSettings(), tile_size: int | None = None,
                cache=None, progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> Embeddings:
    """One embedding for the whole field (id 0): the mean over its tiles, or the padded square image."""
    settings = replace(settings.resolved(backbone), crop_size=tile_size, mask_background=False)
    stains = validate_stains(image.stains, image.data.shape[0], need_protein=False)
    key = embedding_signature("field", image, None, backbone, settings, tile_size)
    total = len(field_tile_origins(image.data.shape[1:], tile_size))
    embedder = Embedder(backbone, settings)
    cached = _from_cache(cache, key, progress, total, np.zeros(1, np.int64), embedder.output_dim(stains))
    if cached is not None:
        return cached
    batches = iter_field_crops(image, tile_size, settings.batch_size)
    _, tiles = run_batches(embedder, batches, stains, total, progress, cancel, "Embedding the field")
    vectors = tiles.mean(axis=0, keepdims=True)
    result = Embeddings(np.zeros(1, np.int64), vectors, result_signature(key, embedder, vectors, n_tiles=total))
    _to_cache(cache, key, result)
    return result


def _from_cache(cache, key: dict, progress, total: int, labels, width: int):
    if cache is None:
        return None
    hit = cache.get(key, labels=labels, width=width)
    if hit is not None:
        report(progress, total, total, "Embeddings loaded from the cache")
    return hit


def _to_cache(cache, key: dict, result: Embeddings) -> None:
    if cache is None:
        return
    try:
        cache.put(key, result)
    except (DinolocError, OSError) as exc:  # the embeddings are still good; only reuse is lost
        warnings.warn(f"Could not write the embedding cache: {exc}", RuntimeWarning, stacklevel=3)
