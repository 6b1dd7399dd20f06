"""The defaults of the engine, in one place: the front ends and the core read them from here."""

# The shipped cell model: offline, no download, and ahead of random weights on the synthetic and the
# real HPA cells (docs/cell-model.md has the figures, and where the classic features still win).
BACKBONE = "dinoloc-cells"
STRATEGY = "natural"  # each stain into the slot of the same stain (Isselmann et al.: their best)
HEAD = "logistic"  # linear probe: deterministic, seconds to train
EMBEDDING = "cls"  # pooled token: cls | cls+mean | mean
FINETUNE_LEVEL = "last-blocks"
