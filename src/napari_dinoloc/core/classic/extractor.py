"""Classic features as a feature extractor beside the backbones, and their combination with deep features."""

from __future__ import annotations

from typing import Union

import numpy as np

from ..embedding import Embeddings
from ..embedding import signature as cache_signature
from ..errors import DinolocError
from ..files import hash_array
from ..progress import CancelToken, ProgressCallback
from .features import classic_features

#: Bump when a feature changes, so cached or saved classic vectors are not mixed with new ones.
FEATURES_VERSION = 1


class ClassicFeatures:
    """Hand-crafted per-cell measurements, used like a backbone: ``embed`` gives an Embeddings."""

    name = "classic"

    def describe(self) -> str:
        return ("Classical per-cell features (no deep model): intensity statistics of every stain; the protein's "
                "radial distribution from the nucleus centre and from the nucleus border to the cell border "
                "(as CellProfiler's MeasureObjectIntensityDistribution); protein-nucleus correlation and the "
                "protein's share inside the nucleus; Haralick texture and local binary patterns; granularity "
                "and puncta; cell and nucleus shape.")

    def embed(self, image, labels: np.ndarray, table=None, nuclei: np.ndarray | None = None,
              progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> Embeddings:
        """One feature vector per cell of ``table`` (the CellTable of ``labels``, computed if not given)."""
        if table is None:
            from ..segmentation import CellTable

            table = CellTable.from_labels(labels)
        vectors, names = classic_features(image.data, image.stains, labels, table.label, nuclei, progress, cancel)
        key = cache_signature(kind="cells", image_hash=image.content_hash, labels_hash=hash_array(labels),
                              stains=image.stains, backbone=self.name, weights_hash=f"classic:v{FEATURES_VERSION}",
                              strategy="classic", embedding="classic", crop_size=None, input_size=0,
                              mask_background=True)
        key["nuclei_hash"] = None if nuclei is None else hash_array(nuclei)
        signature = {**key, "precision_used": "fp32", "dim": int(vectors.shape[1]), "feature_names": names}
        return Embeddings(np.asarray(table.label).copy(), vectors, signature)


def standardised_block(x: np.ndarray) -> np.ndarray:
    """z-scored columns (constant columns stay 0), scaled by 1/sqrt(dim) so the block's total variance is 1."""
    x = np.asarray(x, dtype=np.float64)
    std = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(std > 1e-12, std, 1.0)
    return (z / np.sqrt(x.shape[1])).astype(np.float32)


Features = Union[Embeddings, np.ndarray]


def combine(deep: Features, classic: Features) -> Features:
    """``dino+classic``: both blocks standardised over the cells given, then side by side, so neither
    dominates by its number of dimensions or its scale. Arrays in, array out; Embeddings in (same cells,
    same order), Embeddings out."""
    if isinstance(deep, Embeddings) != isinstance(classic, Embeddings):
        raise DinolocError("Combine two Embeddings or two arrays, not one of each.")
    if not isinstance(deep, Embeddings):
        deep, classic = np.asarray(deep), np.asarray(classic)
        if deep.ndim != 2 or classic.ndim != 2 or len(deep) != len(classic):
            raise DinolocError(f"Cannot combine features of shapes {deep.shape} and {classic.shape}: give one row per cell in both.")
        return np.hstack([standardised_block(deep), standardised_block(classic)])
    if not np.array_equal(deep.labels, classic.labels):
        raise DinolocError("The deep and classic features describe different cells: compute both on the same labels.")
    vectors = combine(deep.vectors, classic.vectors)
    backbone = f"{deep.signature.get('backbone', 'deep')}+{classic.signature.get('backbone', 'classic')}"
    signature = {**deep.signature, "backbone": backbone, "dim": int(vectors.shape[1]), "combined": "zscore/sqrt(dim) per block",
                 "parts": [deep.signature, classic.signature]}
    return Embeddings(deep.labels.copy(), vectors, signature)
