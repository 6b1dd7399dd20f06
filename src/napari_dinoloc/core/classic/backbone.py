"""``classic`` and ``<backbone>+classic`` as feature extractors chosen like a backbone.

The classic block (and the deep block, when combined) is z-scored with a ``FeatureScaler``: fitted
once, on the first image embedded (the training cells' image when a model is trained), then frozen
and saved in the model bundle, so cells of new images are scaled with the training statistics.
Each block is also divided by sqrt(its width), so a combination weighs both blocks alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import DinolocError
from .extractor import FEATURES_VERSION, ClassicFeatures

CLASSIC = "classic"
SUFFIX = "+" + CLASSIC
#: Cells are cut to this window for the classic features' spec (they use the whole cell mask instead).
CLASSIC_INPUT_SIZE = 64


def is_classic_name(name: str) -> bool:
    return name == CLASSIC or str(name).endswith(SUFFIX)


def transformer_for(name: str) -> str:
    """The vision transformer behind a feature choice, for what needs patches (patch maps): NAME for
    ``NAME+classic``, the default backbone for ``classic`` alone, the name itself otherwise."""
    from .. import defaults

    if name == CLASSIC:
        return defaults.BACKBONE
    return name[: -len(SUFFIX)] if str(name).endswith(SUFFIX) else name


def feature_choices() -> list[str]:
    """Every name ``--backbone`` takes: the backbones, ``classic``, and each backbone ``+classic``."""
    from ..backbones import BACKBONES

    names = list(BACKBONES.names())
    return [*names, CLASSIC, *(n + SUFFIX for n in names)]


def load_features(name: str, weights=None, device: str = "auto"):
    """A backbone by name, or the classic features (alone or joined to a backbone)."""
    from ..backbones import load_backbone

    if not is_classic_name(name):
        return load_backbone(name, weights=weights, device=device)
    deep = None if name == CLASSIC else load_backbone(name[: -len(SUFFIX)], weights=weights, device=device)
    return ClassicBackbone(deep)


@dataclass
class FeatureScaler:
    """Per-column mean and spread of each block, from the cells it was fitted on."""

    blocks: list[int]
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, blocks: list[int]) -> "FeatureScaler":
        x = np.asarray(x, np.float64)
        std = x.std(axis=0)
        return cls(list(blocks), x.mean(axis=0), np.where(std > 1e-12, std, 1.0))

    def transform(self, x: np.ndarray) -> np.ndarray:
        if x.shape[1] != len(self.mean):
            raise DinolocError(f"These features have {x.shape[1]} columns; the scaler was fitted on {len(self.mean)}: "
                               "use the same stains and backbone as the model was trained with.")
        z = (np.asarray(x, np.float64) - self.mean) / self.std
        weights = np.concatenate([np.full(n, 1 / np.sqrt(n)) for n in self.blocks])
        return (z * weights).astype(np.float32)

    def to_dict(self) -> dict:
        return {"blocks": self.blocks, "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureScaler":
        try:
            return cls([int(b) for b in data["blocks"]], np.asarray(data["mean"], np.float64),
                       np.asarray(data["std"], np.float64))
        except (KeyError, TypeError, ValueError) as exc:
            raise DinolocError(f"The model's feature scaling is damaged ({exc}): train the model again.") from exc


@dataclass
class _Spec:
    """What the embedding settings read from a backbone's spec."""

    name: str = CLASSIC
    input_size: int = CLASSIC_INPUT_SIZE
    patch_size: int = 1
    normalization: str = "none"
    slots: tuple = ()


@dataclass(eq=False)
class ClassicBackbone:
    """Classic features, alone or after a deep backbone's embedding; used where a LoadedBackbone is."""

    deep: Optional[object] = None  # LoadedBackbone, or None for classic alone
    scaler: Optional[FeatureScaler] = None
    extractor: ClassicFeatures = field(default_factory=ClassicFeatures)
    is_classic = True
    is_finetuned = False
    finetuned_from = None

    @property
    def name(self) -> str:
        return CLASSIC if self.deep is None else self.deep.name + SUFFIX

    @property
    def weights_hash(self) -> str:
        own = f"{CLASSIC}:v{FEATURES_VERSION}"
        return own if self.deep is None else f"{self.deep.weights_hash}+{own}"

    @property
    def spec(self):
        return self.deep.spec if self.deep is not None else _Spec()

    @property
    def device(self):
        import types

        return self.deep.device if self.deep is not None else types.SimpleNamespace(type="cpu")

    def bundle_extra(self) -> dict:
        return {"feature_scaler": self.scaler.to_dict()} if self.scaler is not None else {}

    def restore(self, extra: dict) -> "ClassicBackbone":
        if "feature_scaler" not in extra:
            raise DinolocError("This model has no feature scaling for its classic features: train it again.")
        self.scaler = FeatureScaler.from_dict(extra["feature_scaler"])
        return self

    def embed_cells(self, image, labels, settings, cache=None, progress=None, cancel=None, table=None):
        """Embeddings: [deep | classic], each block z-scored with the frozen scaler (fitted here the first time)."""
        from ..embedding import Embeddings, embed_cells

        classic = self.extractor.embed(image, labels, table=table, progress=progress, cancel=cancel)
        parts, blocks, signature = [classic.vectors], [classic.dim], dict(classic.signature)
        if self.deep is not None:
            deep = embed_cells(image, labels, self.deep, settings, cache=cache, progress=progress, cancel=cancel, table=table)
            parts, blocks = [deep.vectors, classic.vectors], [deep.dim, classic.dim]
            signature = {**deep.signature, "parts": [deep.signature, classic.signature]}
        raw = np.hstack(parts)
        if self.scaler is None:
            self.scaler = FeatureScaler.fit(raw, blocks)
        vectors = self.scaler.transform(raw)
        signature.update(backbone=self.name, weights_hash=self.weights_hash, dim=int(vectors.shape[1]),
                         scaled="z-score per column, 1/sqrt(width) per block, statistics of the first image")
        return Embeddings(classic.labels, vectors, signature)
