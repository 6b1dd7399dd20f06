"""Fine-tuning the backbone on the cells the user annotated.

The OpenCell transfer paper (Isselmann et al., arXiv 2604.10970) reports macro-F1 0.822 for a frozen
DINO backbone + head and 0.860 after fine-tuning. Three levels:

- ``head``: frozen embeddings, only the head is trained (seconds);
- ``last-blocks``: the last N transformer blocks + the final norm + a linear classifier;
- ``full``: the whole backbone, with layer-wise learning-rate decay (each block below the top gets
  ``layer_decay`` times the rate of the one above, so early, generic features move least).

The trained model is the engine's own path: crops -> Cell-DINO augmentations (augment.py) ->
strategy views -> normalisation -> backbone tokens -> pooled embedding (cls / mean / cls+mean) ->
linear classifier, with class-balanced sampling. The classifier starts as the logistic probe fitted
on frozen embeddings of augmented training cells (linear probing, then fine-tuning: Kumar et al.,
ICLR 2022). Early stopping watches the validation macro-F1 of a logistic probe refitted each epoch
on the features that epoch's training steps produced: it scores the features the final head will
use, and epoch 0 (the frozen backbone) competes too, so the weights kept are never worse than the
frozen ones on the validation cells.

After training, the training cells are embedded again by the engine's ``Embedder`` with the
fine-tuned weights and a head from ``heads.py`` is fitted on them; the bundle stores that head and
the full fine-tuned state dict, so ``apply_finetuned`` + ``embed_cells`` + ``head.predict`` in a
later session reproduces the predictions. The backbone passed in is never modified: training runs
on a deep copy, so cancelling leaves the caller's model exactly as it was.
"""

from ..backbones import apply_finetuned, is_fine_tuned, state_hash
from ..bundle import finetune_bundle
from ._cells import CellSet, check_annotations, collect_annotated_cells, embed_cell_crops, stratified_split
from ._divergence import DIVERGENCE_EPOCHS, DIVERGENCE_FACTOR, DivergenceWatch
from ._compare import FinetuneComparison, compare_frozen_vs_finetuned
from ._run import EpochCallback, FinetuneResult, finetune, finetune_cells, validate_head
from ._settings import LEVELS, FinetuneSettings
from ._trainer import (
    EarlyStopping, Trainer, balanced_order, is_out_of_memory, layer_index, parameter_groups, seeded, set_trainable,
    warmup_cosine,
)

__all__ = [
    "CellSet", "DIVERGENCE_EPOCHS", "DIVERGENCE_FACTOR", "DivergenceWatch", "EarlyStopping", "EpochCallback", "FinetuneComparison", "FinetuneResult", "FinetuneSettings", "LEVELS",
    "Trainer", "apply_finetuned", "balanced_order", "check_annotations", "collect_annotated_cells",
    "compare_frozen_vs_finetuned", "embed_cell_crops", "finetune", "finetune_bundle", "finetune_cells",
    "is_fine_tuned", "is_out_of_memory", "layer_index", "parameter_groups", "seeded", "set_trainable", "state_hash",
    "stratified_split", "validate_head", "warmup_cosine",
]
