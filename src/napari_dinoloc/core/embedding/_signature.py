"""The signature of an embedding: everything that determines it, so a cache never mixes two kinds.

The embedder knows what changes its output; the cache only stores and loads by the signature it is given.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from ..backbones import LoadedBackbone
from ._settings import EmbedSettings

CACHE_FORMAT = 1


def signature(*, kind: str, image_hash: str, labels_hash: str | None, stains, backbone: str, weights_hash: str,
              strategy: str, embedding: str, crop_size: int | None, input_size: int, mask_background: bool,
              tile_size: int | None = None, device: str = "cpu", precision: str = "auto") -> dict:
    """Everything that determines the embeddings of one image (batch size does not)."""
    from ... import __version__

    return {
        "format": CACHE_FORMAT, "version": __version__, "kind": kind,
        "image_hash": image_hash, "labels_hash": labels_hash, "stains": list(stains),
        "backbone": backbone, "weights_hash": weights_hash, "strategy": strategy, "embedding": embedding,
        "crop_size": crop_size, "input_size": input_size, "mask_background": bool(mask_background),
        "tile_size": tile_size, "device": device, "precision": precision,
    }


def canonical(sig: dict) -> dict:
    """The signature as JSON stores it (tuples become lists), for comparing a stored one with a new one."""
    return json.loads(json.dumps(sig, sort_keys=True))


def signature_key(sig: dict) -> str:
    """A short hash of the signature (a cache file name)."""
    return hashlib.sha256(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:40]


def embedding_signature(kind: str, image, labels_hash, backbone: LoadedBackbone, settings: EmbedSettings,
                        tile_size=None, window: int | None = None) -> dict:
    """The signature of embedding ``image`` (cells of labels with ``labels_hash``, or the field) this way.

    ``window``: the crop window used for these cells; when it came from the cell size, the signature
    says so (crop_mode "cells", crop_cells) so that a bundle crops new images by their own cell size."""
    sized = kind == "cells" and not settings.crop_size
    crop = {"crop_mode": "cells" if sized else "fixed", "crop_cells": float(settings.crop_cells) if sized else None,
            "resize_factor": (settings.input_size / window) if window else None}
    return {**crop, **signature(
        kind=kind, image_hash=image.content_hash, labels_hash=labels_hash, stains=image.stains,
        backbone=backbone.name, weights_hash=backbone.weights_hash, strategy=settings.strategy,
        embedding=settings.embedding, crop_size=window or settings.crop_size, input_size=settings.input_size,
        mask_background=settings.mask_background, tile_size=tile_size, device=backbone.device.type,
        precision=settings.precision,
    )}


def result_signature(key: dict, embedder, vectors: np.ndarray, **extra) -> dict:
    """The signature of finished embeddings: the request plus what the run decided (precision, size, slots)."""
    return {**key, "precision_used": embedder.precision_used or "fp32", "dim": int(vectors.shape[1]),
            "slots": list(embedder.backbone.spec.slots), "normalization": embedder.backbone.spec.normalization, **extra}
