"""The defaults of the engine, in one place: the front ends and the core read them from here."""

BACKBONE = "dino-vits16"  # DINO ViT-S/16, ImageNet: small, fast, downloads once
STRATEGY = "natural"  # each stain into the slot of the same stain (Isselmann et al.: their best)
HEAD = "logistic"  # linear probe: deterministic, seconds to train
EMBEDDING = "cls"  # pooled token: cls | cls+mean | mean
FINETUNE_LEVEL = "last-blocks"
