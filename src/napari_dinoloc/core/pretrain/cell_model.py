"""The small cell ViT napari-dinoloc ships, and building ViTs to pretrain from scratch."""

from __future__ import annotations

from ..backbones import BACKBONES, CELL_MODEL, BackboneSpec
from ..errors import DinolocError

CELL_MODEL_NAME = CELL_MODEL
#: ~2.7M parameters: patch 8 on 64 px gives 8x8 tokens, about a nucleus-sized patch each (registered
#: in backbones/_registry.py; its weights ship as package data).
CELL_MODEL_SPEC = BACKBONES[CELL_MODEL]


def build_vit(spec: BackboneSpec, seed: int = 0, drop_path_rate: float = 0.0):
    """A randomly initialised ViT for ``spec`` (same layout as the registry builds: same state-dict keys)."""
    import torch

    if spec.arch is None and not spec.arch_kwargs:
        raise DinolocError(f"The backbone {spec.name!r} reads its architecture from a weights file: give the file.")
    common = {"num_classes": 0, "dynamic_img_size": True, "drop_path_rate": drop_path_rate}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.arch is None:
            from timm.models.vision_transformer import VisionTransformer

            return VisionTransformer(**{**common, **spec.arch_kwargs})
        import timm

        return timm.create_model(spec.arch, pretrained=False, **{**common, **spec.arch_kwargs})


def resolve_start(start, weights=None, seed: int = 0, drop_path_rate: float = 0.0):
    """(spec, backbone module) for a starting point.

    ``start``: None (the shipped architecture from scratch), a BackboneSpec (from scratch, or from
    ``weights``), a registered backbone name (its weights: hub, file or seeded random), or a
    LoadedBackbone.
    """
    import copy

    from ..backbones import LoadedBackbone, load_backbone, load_weights_into, read_checkpoint

    if start is None:
        start = CELL_MODEL_SPEC
    if isinstance(start, LoadedBackbone):
        return start.spec, copy.deepcopy(start.model).cpu()
    if isinstance(start, BackboneSpec):
        model = build_vit(start, seed, drop_path_rate)
        if weights is not None:
            from pathlib import Path

            load_weights_into(model, read_checkpoint(weights), start, Path(weights))
        return start, model
    if isinstance(start, str):
        BACKBONES.lookup(start)  # a clear error for unknown names
        loaded = load_backbone(start, weights=weights, device="cpu")
        return loaded.spec, loaded.model
    raise DinolocError(f"Cannot start pretraining from {start!r}: give a backbone name, a BackboneSpec or a loaded backbone.")
