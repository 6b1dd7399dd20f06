"""The backbones napari-dinoloc knows: a timm ViT architecture + a weights source + what its input means.

Weights come from the timm hub (``source="timm"``), from a local file the user gives
(``source="file"``; DINO training checkpoints, plain state dicts, safetensors), from a file shipped
inside the package (``source="package"``: ``napari_dinoloc/models/<name>.safetensors``, no network)
or from a seeded random initialisation (``source="random"``, only when the name says so: never a
silent fallback).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import defaults
from ..registry import Registry
from ._camae import CA_MAE_ARCH
from ..stains import CELL_PAINTING_SLOTS, HPA_SLOTS, NUCLEUS, PROTEIN, RGB_SLOTS

NORMALIZATIONS = ("imagenet", "self", "instance")
SOURCES = ("timm", "file", "package", "random")

DINO_PAPER = "Caron et al., Emerging Properties in Self-Supervised Vision Transformers (ICCV 2021)"
DINOV2_PAPER = "Oquab et al., DINOv2: Learning Robust Visual Features without Supervision (TMLR 2024)"
CELL_MODEL = "dinoloc-cells"  # the small cell ViT trained by scripts/pretrain_cell_model.py and shipped
CELL_DINO_PAPER = ("Moutakanni, Doron et al., Cell-DINO / Channel-Adaptive DINO (DINOv2 code base, "
                   "dinov2/hub/cell_dino; non-commercial licence, weights from a file)")
CA_MAE_PAPER = ("Kraus et al., Masked Autoencoders for Microscopy are Scalable Learners of Cellular Biology "
                "(CVPR 2024; OpenPhenom, recursionpharma/maes_microscopy; non-commercial licence)")
DINO4CELLS_PAPER = "Doron, Moutakanni et al., Unbiased single-cell morphology with self-supervised vision transformers (DINO4Cells)"


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    description: str
    paper: str
    source: str  # "timm" | "file" | "package" | "random"
    arch: str | None  # timm model name; None: built from arch_kwargs (or inferred from a checkpoint)
    slots: tuple[str, ...]  # stain of each input slot
    normalization: str  # "imagenet" | "self"
    input_size: int
    patch_size: int
    arch_kwargs: dict = field(default_factory=dict)

    @property
    def in_chans(self) -> int:
        return len(self.slots)



BACKBONES: Registry[BackboneSpec] = Registry("backbone", default=defaults.BACKBONE)


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    if spec.source not in SOURCES:
        raise ValueError(f"unknown backbone source {spec.source!r}")
    if spec.normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {spec.normalization!r}")
    if spec.normalization == "imagenet" and len(spec.slots) != 3:
        raise ValueError("ImageNet normalisation needs exactly 3 (RGB) slots")
    return BACKBONES.register(spec.name, spec)



def _register_defaults() -> None:
    for size, width in (("s", "small"), ("b", "base")):
        for patch in (16, 8):
            register_backbone(BackboneSpec(
                name=f"dino-vit{size}{patch}",
                description=f"DINO ViT-{size.upper()}/{patch} pretrained on ImageNet-1k (3 channels, RGB slots).",
                paper=DINO_PAPER, source="timm", arch=f"vit_{width}_patch{patch}_224.dino",
                slots=RGB_SLOTS, normalization="imagenet", input_size=224, patch_size=patch,
            ))
    register_backbone(BackboneSpec(
        name="dinov2-vits14",
        description="DINOv2 ViT-S/14 (LVD-142M), run at 224 px (3 channels, RGB slots).",
        paper=DINOV2_PAPER, source="timm", arch="vit_small_patch14_dinov2.lvd142m",
        slots=RGB_SLOTS, normalization="imagenet", input_size=224, patch_size=14,
        arch_kwargs={"img_size": 224},
    ))
    register_backbone(BackboneSpec(
        name="hpa-dino-vits16",
        description="DINO4Cells 4-channel ViT-S/16 trained on HPA (microtubules, protein, nucleus, ER); "
                    "needs the checkpoint file (--weights).",
        paper=DINO4CELLS_PAPER, source="file", arch="vit_small_patch16_224",
        slots=HPA_SLOTS, normalization="self", input_size=224, patch_size=16,
        arch_kwargs={"in_chans": 4},
    ))
    _register_cell_dino()
    register_backbone(BackboneSpec(
        name="ca-mae-vits16",
        description="Channel-agnostic MAE encoder (OpenPhenom ViT-S/16, 256 px): one shared patch embedding for "
                    "every stain, any number and order of stains (use the 'all-stains' strategy; embedding 'mean' "
                    "or 'stain-means'); needs the published weights file (--weights).",
        paper=CA_MAE_PAPER, source="file", arch=CA_MAE_ARCH, slots=CELL_PAINTING_SLOTS, normalization="instance",
        input_size=256, patch_size=16,
        arch_kwargs={"img_size": 256, "patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6},
    ))
    register_backbone(BackboneSpec(
        name="checkpoint",
        description="Any local ViT checkpoint; the architecture is read from the file "
                    "(4 channels: HPA slots, 3: RGB slots, 1: protein only).",
        paper=DINO_PAPER, source="file", arch=None,
        slots=RGB_SLOTS, normalization="imagenet", input_size=224, patch_size=16,
    ))
    register_backbone(BackboneSpec(
        name=CELL_MODEL,
        description="Small cell ViT shipped with napari-dinoloc (192 dims, 6 blocks, patch 8, 64 px; slots protein, "
                    "nucleus, a missing nucleus is zero), pretrained with DINO on public cell images; works offline.",
        paper=DINO4CELLS_PAPER, source="package", arch=None, slots=(PROTEIN, NUCLEUS), normalization="self",
        input_size=64, patch_size=8,
        arch_kwargs={"img_size": 64, "patch_size": 8, "in_chans": 2, "embed_dim": 192, "depth": 6, "num_heads": 3,
                     "mlp_ratio": 4.0, "qkv_bias": True},
    ))
    register_backbone(BackboneSpec(
        name="random",
        description="ViT-S/16 with seeded random weights: a baseline, and the cost of dino-vits16 offline.",
        paper="", source="random", arch="vit_small_patch16_224",
        slots=RGB_SLOTS, normalization="imagenet", input_size=224, patch_size=16,
    ))
    register_backbone(BackboneSpec(
        name="random-tiny",
        description="Tiny ViT with seeded random weights, for tests (patch 8, 64 dims, 2 blocks, 32 px).",
        paper="", source="random", arch=None,
        slots=RGB_SLOTS, normalization="imagenet", input_size=32, patch_size=8,
        arch_kwargs={"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2},
    ))


def _vit(img_size: int, patch: int, in_chans: int, dim: int, depth: int) -> dict:
    # DINOv2 style: layer scale (values from the file), 64-dim heads; registers are read from the file
    return {"img_size": img_size, "patch_size": patch, "in_chans": in_chans, "embed_dim": dim, "depth": depth,
            "num_heads": dim // 64, "init_values": 1.0}


def _register_cell_dino() -> None:
    for name, what, slots, size, patch, dim, depth in (
        ("cell-dino-hpa-vitl16", "Cell-DINO ViT-L/16 trained on HPA (4 stains: microtubules, protein, nucleus, ER), 224 px",
         HPA_SLOTS, 224, 16, 1024, 24),
        ("cell-dino-cp-vits8", "Cell-DINO ViT-S/8 trained on Cell Painting (5 stains: DNA, RNA, ER, AGP, Mito), 128 px",
         CELL_PAINTING_SLOTS, 128, 8, 384, 12),
        ("channel-adaptive-dino-vitl16", "Channel-Adaptive DINO ViT-L/16, one stain at a time (use the "
         "'bag-of-channels' strategy: any number of stains), 224 px", (PROTEIN,), 224, 16, 1024, 24),
    ):
        register_backbone(BackboneSpec(
            name=name, description=f"{what}; needs the DINOv2-layout checkpoint file (--weights).",
            paper=CELL_DINO_PAPER, source="file", arch=None, slots=slots, normalization="self",
            input_size=size, patch_size=patch, arch_kwargs=_vit(size, patch, len(slots), dim, depth),
        ))


_register_defaults()
