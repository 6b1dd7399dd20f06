"""What shapes an embedding (EmbedSettings) and what comes out (Embeddings)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

import numpy as np

from .. import defaults
from ..backbones import LoadedBackbone
from ..devices import PRECISIONS
from ..errors import DinolocError
from ..strategies import STRATEGIES

#: 'stain-means': the mean patch token of each stain, concatenated (channel-agnostic backbones: CA-MAE)
EMBEDDING_TYPES = ("cls", "cls+mean", "mean", "stain-means")
#: Default crop window, in median cell diameters: the cell fills the model's view with some context
#: around it (a 224-px window round a 64-px cell scored F1 0.31 where a cell-sized one scored 0.50).
CROP_CELL_DIAMETERS = 2.0
#: The smallest crop window made from the cell size, in pixels.
MIN_CELL_CROP = 16


def cell_crop_size(table, cell_diameters: float = CROP_CELL_DIAMETERS) -> int:
    """A crop window of ``cell_diameters`` times the median cell diameter (largest bounding-box side)."""
    bbox = np.asarray(table.bbox)
    if len(bbox) == 0:
        return MIN_CELL_CROP
    extent = np.maximum(bbox[:, 2] - bbox[:, 0], bbox[:, 3] - bbox[:, 1])
    return max(MIN_CELL_CROP, int(round(cell_diameters * float(np.median(extent)))))


@dataclass(frozen=True)
class EmbedSettings:
    strategy: str = defaults.STRATEGY
    embedding: str = defaults.EMBEDDING  # one of EMBEDDING_TYPES
    crop_size: int | None = None  # fixed pixels of the image around each cell; None: from the cell size
    crop_cells: float = CROP_CELL_DIAMETERS  # without crop_size: the window in median cell diameters
    input_size: int | None = None  # crops are resized to this; None: the backbone's input size
    mask_background: bool = True
    batch_size: int = 32
    device: str = "auto"  # where the caller loads the backbone; the Embedder runs on the backbone's device
    precision: str = "auto"  # auto | fp32 | bf16 | fp16

    def resolved(self, backbone: LoadedBackbone) -> "EmbedSettings":
        """Sizes filled in from the backbone, every choice checked."""
        STRATEGIES.lookup(self.strategy)
        if self.embedding not in EMBEDDING_TYPES:
            raise DinolocError(f"Unknown embedding type {self.embedding!r}: choose one of {', '.join(EMBEDDING_TYPES)}.")
        # CA-MAE takes any number of stains (classic features have no model at all)
        agnostic = getattr(getattr(backbone, "model", None), "tokens_per_stain", None) is not None
        if (self.strategy == "all-stains" or self.embedding == "stain-means") and not agnostic:
            raise DinolocError(f"The 'all-stains' strategy and the 'stain-means' embedding need a channel-agnostic "
                               f"backbone (ca-mae-vits16); {backbone.name!r} takes a fixed set of input slots.")
        if self.precision not in PRECISIONS:
            raise DinolocError(f"Unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}.")
        if self.batch_size < 1:
            raise DinolocError(f"The batch size must be at least 1 (got {self.batch_size}).")
        size = backbone.spec.input_size
        settings = replace(self, input_size=self.input_size or size)
        patch = backbone.spec.patch_size
        if settings.input_size % patch:
            raise DinolocError(f"The input size {settings.input_size} is not a multiple of the backbone's patch size {patch}: "
                               f"use e.g. {max(patch, settings.input_size // patch * patch)}.")
        if settings.crop_size is not None and settings.crop_size < 1:
            raise DinolocError(f"The crop size must be at least 1 pixel (got {settings.crop_size}).")
        if not settings.crop_cells > 0:
            raise DinolocError(f"The crop window must be a positive number of cell diameters (got {settings.crop_cells}).")
        return settings

    def window_for(self, table, image_shape=None) -> int:
        """The crop window in pixels for the cells of ``table``: the fixed crop size, else from their size
        (never larger than the image: a single-cell crop is its own window)."""
        if self.crop_size:
            return int(self.crop_size)
        window = cell_crop_size(table, self.crop_cells)
        return min(window, max(image_shape)) if image_shape else window

    @classmethod
    def from_signature(cls, signature: Mapping, base: "EmbedSettings | None" = None) -> "EmbedSettings":
        """The settings that made embeddings with this ``signature`` (``Embeddings.signature``, or a bundle's
        description): strategy, embedding type, crop and input size, background masking and precision
        (when recorded). Where to run (device, batch size) comes from ``base`` (default: the defaults)."""
        base = cls() if base is None else base
        return replace(base, strategy=signature["strategy"], embedding=signature["embedding"],
                       crop_size=signature["crop_size"] if signature.get("crop_mode") != "cells" else None,
                       crop_cells=float(signature.get("crop_cells") or CROP_CELL_DIAMETERS),
                       input_size=signature["input_size"],
                       mask_background=bool(signature["mask_background"]),
                       precision=signature.get("precision", base.precision))


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
