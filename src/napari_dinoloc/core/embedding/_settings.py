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


@dataclass(frozen=True)
class EmbedSettings:
    strategy: str = defaults.STRATEGY
    embedding: str = defaults.EMBEDDING  # one of EMBEDDING_TYPES
    crop_size: int | None = None  # pixels of the image around each cell; None: the backbone's input size
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
        agnostic = getattr(backbone.model, "tokens_per_stain", None) is not None  # CA-MAE: any number of stains
        if (self.strategy == "all-stains" or self.embedding == "stain-means") and not agnostic:
            raise DinolocError(f"The 'all-stains' strategy and the 'stain-means' embedding need a channel-agnostic "
                               f"backbone (ca-mae-vits16); {backbone.name!r} takes a fixed set of input slots.")
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

    @classmethod
    def from_signature(cls, signature: Mapping, base: "EmbedSettings | None" = None) -> "EmbedSettings":
        """The settings that made embeddings with this ``signature`` (``Embeddings.signature``, or a bundle's
        description): strategy, embedding type, crop and input size, background masking and precision
        (when recorded). Where to run (device, batch size) comes from ``base`` (default: the defaults)."""
        base = cls() if base is None else base
        return replace(base, strategy=signature["strategy"], embedding=signature["embedding"],
                       crop_size=signature["crop_size"], input_size=signature["input_size"],
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
