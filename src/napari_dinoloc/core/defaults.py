"""The defaults of the engine, in one place: the front ends and the core read them from here."""

# The shipped cell model: offline, no download; the backbone used where a ViT is needed (adapting,
# patch maps, NAME+classic) and none is chosen.
BACKBONE = "dinoloc-cells"
# The per-cell features used when the user chooses none: whichever measured best on the real labelled
# cells (docs/cell-model.md has the figures and the benchmark command). Any `--backbone` name works here.
FEATURES = "classic"  # HPA composites, logistic: 0.361 vs 0.204 dinoloc-cells, 0.331 dinoloc-cells+classic
STRATEGY = "natural"  # each stain into the slot of the same stain (Isselmann et al.: their best)
HEAD = "logistic"  # linear probe: deterministic, seconds to train
EMBEDDING = "cls"  # pooled token: cls | cls+mean | mean
FINETUNE_LEVEL = "last-blocks"
# Screens cut images larger than this many pixels on a side into tiles, one task each (0: never): 4096²
# with 4 stains as float32 and the segmentation's working planes stay near 1 GB per worker.
SCREEN_TILE = 4096
