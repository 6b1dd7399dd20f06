"""What one task does on a worker: load the model once per worker process, embed (and predict) one image,
write its shard. Runs the same in-process (no cluster) and on a Dask worker."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from ..errors import Cancelled, DinolocError

EMBED, PREDICT = "embed", "predict"


@dataclass(frozen=True)
class TaskSpec:
    """Everything a worker needs besides the image; small, sent with every task."""

    command: str                     # EMBED or PREDICT
    options: object                  # core.batch.RunOptions without a notify callback
    model_hash: str                  # the key of the worker's model cache
    backbone: Optional[str] = None   # EMBED: backbone name; PREDICT: the name given with the model, or None
    model_path: Optional[str] = None  # PREDICT: the bundle file
    weights: Optional[str] = None
    device: str = "auto"
    cache_dir: Optional[str] = None  # embedding cache folder; None: no cache


@dataclass
class ShardResult:
    """What a task sends back: small (the embeddings stay in the shard)."""

    key: str
    image: str = ""
    cells: int = 0
    width: int = 0                  # embedding length
    checksum: str = ""
    skipped: str = ""               # the reason, when the image could not be used
    notes: list = field(default_factory=list)
    pid: int = 0                    # the worker process that made it

    def status(self) -> dict:
        from ._run import DONE, SKIPPED

        if self.skipped:
            return {"status": SKIPPED, "reason": self.skipped}
        return {"status": DONE, "image": self.image, "cells": self.cells, "width": self.width, "checksum": self.checksum}


_MODELS: dict = {}  # model hash -> (backbone, PredictionModel or None): one model per worker process


def loaded_model(spec: TaskSpec):
    """(backbone, prediction model or None, run options) of ``spec``; the model is loaded on the first task
    of this process and kept for the next ones (the options always come from the task's spec)."""
    if spec.model_hash not in _MODELS:
        _MODELS.clear()  # a new run's model replaces the last one
        _MODELS[spec.model_hash] = _load(spec)
    backbone, model = _MODELS[spec.model_hash]
    if model is None:
        return backbone, None, spec.options
    from ..bundle import embed_settings_for
    from ..embedding import EmbedSettings

    return backbone, model, replace(spec.options, embed=embed_settings_for(model.bundle, spec.options.embed or EmbedSettings()))


def _load(spec: TaskSpec):
    from ..classic import load_features
    from ._threads import use_worker_share

    use_worker_share()  # on a Dask worker: torch on this worker's share of the cores

    if spec.command == PREDICT:
        from ..workflows.predicting import model_from_bundle

        model = model_from_bundle(spec.model_path, spec.options, spec.weights, spec.device, spec.backbone)
        return model.backbone, model
    return load_features(spec.backbone, weights=spec.weights, device=spec.device), None


def run_image(image, spec: TaskSpec, shard: str) -> ShardResult:
    """Embed (and predict) one ``ScreenImage``; write its shard at ``shard``. An image that cannot be used
    comes back as skipped with the reason; any other error is raised (Dask retries the task)."""
    from ..batch import prepare_session

    notes: list = []
    result = ShardResult(image.key, notes=notes, pid=os.getpid())
    try:
        backbone, model, options = loaded_model(spec)
        options = replace(options, notify=notes.append)
        session = prepare_session(image.job, options, cache=task_cache(spec))
        embed_session(session, backbone, model, options)
    except Cancelled:
        raise
    except DinolocError as exc:
        result.skipped = str(exc)
        return result
    return written(result, shard, session.image.name, session.rows(), session.embeddings)


def task_cache(spec: TaskSpec):
    """The embedding cache the tasks share, or None (``--no-cache``)."""
    from ..cache import EmbeddingCache

    return EmbeddingCache(spec.cache_dir) if spec.cache_dir else None


def embed_session(session, backbone, model, options) -> None:
    """The session's cells embedded, and predicted when there is a model."""
    from ..embedding import EmbedSettings

    session.set_backbone(backbone)
    session.set_embeddings(session.compute_embeddings(options.embed or EmbedSettings()))
    if model is not None:
        from ..bundle import check_bundle_fits

        check_bundle_fits(model.bundle, session.image.stains)
        session.set_head(model.head)


def written(result: ShardResult, shard: str, image: str, rows: list, embeddings) -> ShardResult:
    """``result`` once the shard of these rows and embeddings is written."""
    from ._run import write_shard

    result.image, result.cells = image, len(rows)
    result.width = int(embeddings.vectors.shape[1]) if len(rows) else 0
    result.checksum = write_shard(Path(shard), image, rows, embeddings)
    return result
