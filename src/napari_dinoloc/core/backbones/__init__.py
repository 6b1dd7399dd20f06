"""Backbones: which ones exist (``_registry``), reading checkpoints safely (``_checkpoint``), fitting
weights to an architecture (``_fitting``), loading a model (``_loading``) and fine-tuned weights on a
loaded backbone (``_finetuned``). Checkpoints are read without running pickled code."""

from ._checkpoint import read_checkpoint, weights_file_hash
from ._finetuned import apply_finetuned, is_fine_tuned, numpy_state, state_hash
from ._fitting import SPEC_METADATA_KEY, infer_spec, load_weights_into
from ._loading import (
    IMAGENET_MEAN, IMAGENET_STD, RANDOM_SEED, SELF_NORM_EPS, LoadedBackbone, load_backbone, normalize,
    packaged_weights, save_backbone_weights,
)
from ._registry import (
    BACKBONES, CELL_MODEL, DINO4CELLS_PAPER, DINO_PAPER, DINOV2_PAPER, NORMALIZATIONS, BackboneSpec, register_backbone,
)

__all__ = [
    "BACKBONES", "BackboneSpec", "CELL_MODEL", "DINO4CELLS_PAPER", "DINO_PAPER", "DINOV2_PAPER", "IMAGENET_MEAN", "IMAGENET_STD",
    "LoadedBackbone", "NORMALIZATIONS", "RANDOM_SEED", "SELF_NORM_EPS", "SPEC_METADATA_KEY", "apply_finetuned",
    "infer_spec", "is_fine_tuned", "load_backbone", "load_weights_into", "normalize", "numpy_state", "packaged_weights",
    "read_checkpoint", "register_backbone", "save_backbone_weights", "state_hash", "weights_file_hash",
]
