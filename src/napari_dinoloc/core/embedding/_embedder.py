"""The Embedder: numpy crops in, one vector per crop out (strategy views, normalisation, mixed precision),
and running many batches with their preparation overlapped in a background thread."""

from __future__ import annotations

import queue
import threading
import warnings
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from ..backbones import LoadedBackbone, normalize
from ..devices import autocast_dtype
from ..progress import CancelToken, ProgressCallback, check_cancel, report
from ..strategies import STRATEGIES
from ._settings import EmbedSettings

MIN_COSINE = 0.999  # reduced precision must agree with fp32 this well on every row of the first batch
_PRECISION_NAMES = {"bfloat16": "bf16", "float16": "fp16"}

@dataclass
class PreparedBatch:
    inputs: object  # torch.Tensor (V*B, S, H, W): the views the image has, stacked view-major
    n_views: int
    batch: int
    #: which views ``inputs`` holds; the others (a stain role the image lacks) embed as zeros. None: all
    present: tuple[int, ...] | None = None


class Embedder:
    """A backbone + settings: numpy crops in, one vector per crop out."""

    def __init__(self, backbone: LoadedBackbone, settings: EmbedSettings = EmbedSettings()):
        self.backbone = backbone
        self.settings = settings.resolved(backbone)
        self.strategy = STRATEGIES.lookup(self.settings.strategy)
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
        import torch

        slots = self.backbone.spec.slots
        parts = {"cls+mean": 2, "stain-means": None}.get(self.settings.embedding, 1)
        if parts is None:  # one part per stain of a view
            views = self.strategy.views(torch.zeros(1, len(stains), 1, 1), stains, slots)
            parts = next(v.shape[1] for v in views if v is not None)
        return self.backbone.embed_dim * parts * self.strategy.count_views(stains, slots)

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
        present = tuple(i for i, view in enumerate(views) if view is not None)
        inputs = torch.cat([normalize(views[i], self.backbone.spec) for i in present], dim=0)
        if self.backbone.device.type == "cuda":
            inputs = inputs.pin_memory()
        return PreparedBatch(inputs, len(views), x.shape[0], None if len(present) == len(views) else present)

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
        return pool_tokens(tokens.float(), self.settings.embedding, self.backbone.num_prefix_tokens, x.shape[1])

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
    """(n_present * B, D) pooled tokens, view-major -> (B, n_views * D): each crop's views side by side,
    zeros for the views the image lacks (bag of channels)."""
    import torch

    per_view = pooled.reshape(-1, prepared.batch, pooled.shape[-1])
    if prepared.present is not None:
        parts = dict(zip(prepared.present, per_view))
        per_view = torch.stack([parts[i] if i in parts else torch.zeros_like(per_view[0])
                                for i in range(prepared.n_views)])
    return per_view.permute(1, 0, 2).reshape(prepared.batch, -1)


def pool_tokens(tokens, embedding: str, num_prefix_tokens: int, stains: int = 1):
    """(B, N, D) tokens -> (B, D) CLS, (B, D) mean of patch tokens, (B, 2D) both, or (B, stains*D) the
    mean patch token of each stain (tokens ordered stain by stain, as a channel-agnostic backbone gives)."""
    import torch

    cls = tokens[:, 0]
    if embedding == "cls":
        return cls
    if embedding == "stain-means":
        patches = tokens[:, num_prefix_tokens:]
        return patches.reshape(tokens.shape[0], stains, -1, tokens.shape[-1]).mean(dim=2).flatten(1)
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
