"""Embeddings of cells (or whole fields) from a backbone: crop, map stains to slots, normalise, run.

Crops for the next batch are prepared in a background thread while the model runs the current one.
Reduced precision (bf16/fp16 autocast) is used only after the first batch shows it agrees with fp32.
"""

from __future__ import annotations

import queue
import threading
import warnings
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import numpy as np

from .backbones import LoadedBackbone, normalize
from .cache import signature as cache_signature
from .crops import field_tile_origins, iter_cell_crops, iter_field_crops
from .devices import PRECISIONS, autocast_dtype
from .errors import DinolocError
from .files import hash_array
from .progress import CancelToken, ProgressCallback, check_cancel, report
from .stains import validate_stains
from .strategies import get_strategy

EMBEDDING_TYPES = ("cls", "cls+mean", "mean")
MIN_COSINE = 0.999  # reduced precision must agree with fp32 this well on every row of the first batch
_PRECISION_NAMES = {"bfloat16": "bf16", "float16": "fp16"}


@dataclass(frozen=True)
class EmbedSettings:
    strategy: str = "natural"
    embedding: str = "cls"  # one of EMBEDDING_TYPES
    crop_size: int | None = None  # pixels of the image around each cell; None: the backbone's input size
    input_size: int | None = None  # crops are resized to this; None: the backbone's input size
    mask_background: bool = True
    batch_size: int = 32
    device: str = "auto"  # where the caller loads the backbone; the Embedder runs on the backbone's device
    precision: str = "auto"  # auto | fp32 | bf16 | fp16

    def resolved(self, backbone: LoadedBackbone) -> "EmbedSettings":
        """Sizes filled in from the backbone, every choice checked."""
        get_strategy(self.strategy)
        if self.embedding not in EMBEDDING_TYPES:
            raise DinolocError(f"Unknown embedding type {self.embedding!r}: choose one of {', '.join(EMBEDDING_TYPES)}.")
        if self.precision not in PRECISIONS:
            raise DinolocError(f"Unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}.")
        if self.batch_size < 1:
            raise DinolocError(f"The batch size must be at least 1 (got {self.batch_size}).")
        size = backbone.spec.input_size
        settings = replace(self, crop_size=self.crop_size or size, input_size=self.input_size or size)
        patch = backbone.spec.patch_size
        if settings.input_size % patch:
            raise DinolocError(f"The input size {settings.input_size} is not a multiple of the backbone's patch size {patch}: "
                               f"use e.g. {max(patch, settings.input_size // patch * patch)}.")
        if settings.crop_size < 1:
            raise DinolocError(f"The crop size must be at least 1 pixel (got {settings.crop_size}).")
        return settings


@dataclass
class Embeddings:
    labels: np.ndarray  # (N,) cell labels (or tile / field ids)
    vectors: np.ndarray  # (N, D) float32
    signature: dict  # what produced them: backbone, weights hash, strategy, crop settings, precision used...

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


@dataclass
class PreparedBatch:
    inputs: object  # torch.Tensor (V*B, S, H, W): views stacked view-major
    n_views: int
    batch: int


class Embedder:
    """A backbone + settings: numpy crops in, one vector per crop out."""

    def __init__(self, backbone: LoadedBackbone, settings: EmbedSettings = EmbedSettings()):
        self.backbone = backbone
        self.settings = settings.resolved(backbone)
        self.strategy = get_strategy(self.settings.strategy)
        self.autocast = autocast_dtype(backbone.device, self.settings.precision)
        self.precision_used: str | None = "fp32" if self.autocast is None else None  # decided on the first batch
        self.min_cosine: float | None = None
        if self.autocast is not None and self._check_key() in backbone.precision_checks:
            # checked on an earlier image with this backbone: do not pay an extra fp32 batch per image
            self.precision_used, self.min_cosine = backbone.precision_checks[self._check_key()]

    def _check_key(self) -> tuple:
        s = self.settings
        return (self.backbone.weights_hash, self.backbone.device.type, str(self.autocast), s.strategy,
                s.embedding, s.input_size)

    def output_dim(self, stains: Sequence[str]) -> int:
        per_view = self.backbone.embed_dim * (2 if self.settings.embedding == "cls+mean" else 1)
        return per_view * self.strategy.count_views(stains, self.backbone.spec.slots)

    def prepare(self, crops: np.ndarray, stains: Sequence[str]) -> PreparedBatch:
        """Resize, map stains to slots, normalise: everything before the model (safe in a worker thread)."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32))
        size = self.settings.input_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > size)  # antialias only when shrinking
        views = self.strategy.views(x, stains, self.backbone.spec.slots)
        inputs = torch.cat([normalize(view, self.backbone.spec) for view in views], dim=0)
        if self.backbone.device.type == "cuda":
            inputs = inputs.pin_memory()
        return PreparedBatch(inputs, len(views), x.shape[0])

    def infer(self, prepared: PreparedBatch) -> np.ndarray:
        """(B, n_views * D) float32: the pooled tokens of every view, concatenated per crop."""
        import torch

        with torch.inference_mode():
            x = prepared.inputs.to(self.backbone.device, non_blocking=True)
            if self.precision_used is None:
                pooled = self._choose_precision(x)
            else:
                pooled = self._pooled(x, self._dtype_used())
            return join_views(pooled.float(), prepared).cpu().numpy()

    def embed_batch(self, crops: np.ndarray, stains: Sequence[str]) -> np.ndarray:
        return self.infer(self.prepare(crops, stains))

    def _dtype_used(self):
        return None if self.precision_used == "fp32" else self.autocast

    def _pooled(self, x, dtype):
        import torch

        if dtype is None:
            tokens = self.backbone.tokens(x)
        else:
            with torch.autocast(device_type=self.backbone.device.type, dtype=dtype):
                tokens = self.backbone.tokens(x)
        return pool_tokens(tokens.float(), self.settings.embedding, self.backbone.num_prefix_tokens)

    def _choose_precision(self, x):
        """Run the first batch in fp32 and in reduced precision; keep the latter only if it agrees."""
        import torch

        reference = self._pooled(x, None)
        reduced = self._pooled(x, self.autocast)
        self.min_cosine = float(torch.nn.functional.cosine_similarity(reference, reduced, dim=1).min())
        agrees = self.min_cosine >= MIN_COSINE
        self.precision_used = _PRECISION_NAMES[str(self.autocast).replace("torch.", "")] if agrees else "fp32"
        self.backbone.precision_checks[self._check_key()] = (self.precision_used, self.min_cosine)
        if not agrees:
            warnings.warn(f"{self.settings.precision} results differ from fp32 (cosine {self.min_cosine:.4f} < {MIN_COSINE}); "
                          "running in fp32.", RuntimeWarning, stacklevel=3)
        return reduced if agrees else reference


def join_views(pooled, prepared: PreparedBatch):
    """(n_views * B, D) pooled tokens, view-major -> (B, n_views * D): each crop's views side by side."""
    return pooled.reshape(prepared.n_views, prepared.batch, -1).permute(1, 0, 2).reshape(prepared.batch, -1)


def pool_tokens(tokens, embedding: str, num_prefix_tokens: int):
    """(B, N, D) tokens -> (B, D) CLS, (B, D) mean of patch tokens, or (B, 2D) both."""
    import torch

    cls = tokens[:, 0]
    if embedding == "cls":
        return cls
    mean = tokens[:, num_prefix_tokens:].mean(dim=1)
    return mean if embedding == "mean" else torch.cat([cls, mean], dim=1)


# --- running batches, with preparation overlapped -------------------------------------------

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher:
    """Iterates ``(ids, PreparedBatch)``, preparing up to ``depth`` batches ahead in a background thread."""

    def __init__(self, embedder: Embedder, batches: Iterator, stains: Sequence[str], depth: int = 2):
        self._embedder, self._batches, self._stains = embedder, batches, tuple(stains)
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="dinoloc-crops", daemon=True)

    def __enter__(self) -> "Prefetcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def _produce(self) -> None:
        if self._embedder.backbone.device.type == "cpu":
            import torch

            # this thread's own setting: small ops run 6x more CPU-efficiently on one thread, and the
            # model in the main thread keeps every core (measured in benchmarks/README.md)
            torch.set_num_threads(1)
        try:
            for ids, crops in self._batches:
                if not self._put((ids, self._embedder.prepare(crops, self._stains))):
                    return
            self._put(_DONE)
        except BaseException as error:  # handed to the consumer, raised there
            self._put(_Failure(error))

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False


def run_batches(embedder: Embedder, batches: Iterator, stains: Sequence[str], total: int,
                progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                what: str = "Embedding") -> tuple[np.ndarray, np.ndarray]:
    """All batches through the model: (ids (N,), vectors (N, D)); checks ``cancel`` between batches."""
    vectors = np.empty((total, embedder.output_dim(stains)), np.float32)
    ids = np.empty(total, np.int64)
    done = 0
    report(progress, 0, total, what)
    with Prefetcher(embedder, batches, stains) as prepared_batches:
        for batch_ids, prepared in prepared_batches:
            check_cancel(cancel)
            count = len(batch_ids)
            vectors[done:done + count] = embedder.infer(prepared)
            ids[done:done + count] = batch_ids
            done += count
            report(progress, done, total, what)
    check_cancel(cancel)
    return ids[:done], vectors[:done]


# --- public entry points ----------------------------------------------------------------------

def embed_cells(image, labels: np.ndarray, backbone: LoadedBackbone, settings: EmbedSettings = EmbedSettings(),
                cache=None, progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                table=None) -> Embeddings:
    """One embedding per cell of ``labels`` (``table``: the CellTable of ``labels``, computed if not given)."""
    settings = settings.resolved(backbone)
    stains = validate_stains(image.stains, image.data.shape[0], need_protein=False)
    if table is None:
        from .segmentation import CellTable

        table = CellTable.from_labels(labels)
    key = _signature("cells", image, hash_array(labels), backbone, settings)
    total = len(table.label)
    cached = _from_cache(cache, key, progress, total)
    if cached is not None:
        return cached
    embedder = Embedder(backbone, settings)
    batches = iter_cell_crops(image, labels, table, settings.crop_size, settings.mask_background, settings.batch_size)
    ids, vectors = run_batches(embedder, batches, stains, total, progress, cancel, "Embedding cells")
    result = Embeddings(ids, vectors, _result_signature(key, embedder, vectors))
    _to_cache(cache, key, result)
    return result


def embed_field(image, backbone: LoadedBackbone, settings: EmbedSettings = EmbedSettings(), tile_size: int | None = None,
                cache=None, progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> Embeddings:
    """One embedding for the whole field (id 0): the mean over its tiles, or the padded square image."""
    settings = replace(settings.resolved(backbone), crop_size=tile_size, mask_background=False)
    stains = validate_stains(image.stains, image.data.shape[0], need_protein=False)
    key = _signature("field", image, None, backbone, settings, tile_size)
    total = len(field_tile_origins(image.data.shape[1:], tile_size))
    cached = _from_cache(cache, key, progress, total)
    if cached is not None:
        return cached
    embedder = Embedder(backbone, settings)
    batches = iter_field_crops(image, tile_size, settings.batch_size)
    _, tiles = run_batches(embedder, batches, stains, total, progress, cancel, "Embedding the field")
    vectors = tiles.mean(axis=0, keepdims=True)
    result = Embeddings(np.zeros(1, np.int64), vectors, _result_signature(key, embedder, vectors, n_tiles=total))
    _to_cache(cache, key, result)
    return result


def _signature(kind: str, image, labels_hash, backbone: LoadedBackbone, settings: EmbedSettings, tile_size=None) -> dict:
    return cache_signature(
        kind=kind, image_hash=image.content_hash, labels_hash=labels_hash, stains=image.stains,
        backbone=backbone.name, weights_hash=backbone.weights_hash, strategy=settings.strategy,
        embedding=settings.embedding, crop_size=settings.crop_size, input_size=settings.input_size,
        mask_background=settings.mask_background, tile_size=tile_size, device=backbone.device.type,
        precision=settings.precision,
    )


def _result_signature(key: dict, embedder: Embedder, vectors: np.ndarray, **extra) -> dict:
    return {**key, "precision_used": embedder.precision_used or "fp32", "dim": int(vectors.shape[1]),
            "slots": list(embedder.backbone.spec.slots), "normalization": embedder.backbone.spec.normalization, **extra}


def _from_cache(cache, key: dict, progress, total: int):
    if cache is None:
        return None
    hit = cache.get(key)
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
