"""Multi-crop views of single-cell crops for DINO, with Cell-DINO's augmentations in its order.

Per cell: drop one non-protein stain (p 0.2) -> rescale the protein (p 0.2) -> random-resized crop
(2 global views, several smaller local ones) -> flips and 90° rotations -> per-stain brightness and
contrast (factor max(N(1, 0.2), 0.5)) -> per-image per-stain self-normalisation (the backbone's
``normalize``). No colour jitter, grey-scale, blur or solarisation: stain intensities carry meaning.
Every random draw comes from the ``generator`` passed in, so a seeded step repeats exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from ..augment import drop_one_channel, jitter_brightness, jitter_contrast, random_symmetry, rescale_protein
from ..backbones import BackboneSpec, normalize


@dataclass(frozen=True)
class ViewSettings:
    global_size: int = 64
    local_size: int = 32
    n_local: int = 4  # 32-px local views are cheap; 4 learned as well as 6 here
    global_scale: tuple[float, float] = (0.4, 1.0)   # share of the stored crop's area (DINO: 0.4-1)
    local_scale: tuple[float, float] = (0.05, 0.4)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.2
    contrast: float = 0.2
    drop_channel_p: float = 0.2
    rescale_protein_p: float = 0.2

    @property
    def n_views(self) -> int:
        return 2 + self.n_local


def to_float(crops):
    """Stored crops (uint8 0-255 or float) as float32 in [0, 1]."""
    import torch

    crops = torch.as_tensor(crops)
    if crops.dtype == torch.uint8:
        return crops.float().div_(255.0)
    return crops.float()


def random_resized_crop(x, size: int, scale: Sequence[float], ratio: Sequence[float], generator=None):
    """Each crop: a random box of ``scale`` x its area and aspect ``ratio``, resampled to ``size`` px.

    One batched affine resampling (bilinear); the box stays inside the crop.
    """
    import torch

    batch = x.shape[0]
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(batch, generator=generator)
    log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(batch, generator=generator)
    aspect = torch.exp(log_ratio)
    width = torch.sqrt(area * aspect).clamp(max=1.0)  # box half-extent in normalised [-1, 1] coordinates
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    shift_x = (1.0 - width) * (2.0 * torch.rand(batch, generator=generator) - 1.0)
    shift_y = (1.0 - height) * (2.0 * torch.rand(batch, generator=generator) - 1.0)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width, shift_x
    theta[:, 1, 1], theta[:, 1, 2] = height, shift_y
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = torch.nn.functional.affine_grid(theta, (batch, x.shape[1], size, size), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment_view(x, slots: Sequence[str], settings: ViewSettings, size: int, scale, generator=None):
    """One view of every cell in ``x`` ((B, S, H, W) in [0, 1]), before normalisation."""
    x = drop_one_channel(x, slots, settings.drop_channel_p, generator)
    x = rescale_protein(x, slots, settings.rescale_protein_p, generator)
    x = random_resized_crop(x, size, scale, settings.ratio, generator)
    x = random_symmetry(x, generator)
    foreground = (x != 0).any(dim=1, keepdim=True)  # masked background stays zero under contrast jitter
    x = jitter_brightness(x, settings.brightness, generator)
    x = jitter_contrast(x, settings.contrast, generator)
    return (x * foreground).clamp_(0.0, 1.0)


def make_views(crops, spec: BackboneSpec, settings: ViewSettings = ViewSettings(), generator=None) -> list:
    """2 global + ``n_local`` local normalised views of (B, S, H, W) crops already in the model's slots."""
    x = to_float(crops)
    if x.ndim != 4 or x.shape[1] != len(spec.slots):
        raise ValueError(f"crops must be (B, {len(spec.slots)}, H, W) in the slots {spec.slots}, got {tuple(x.shape)}")
    views = [augment_view(x, spec.slots, settings, settings.global_size, settings.global_scale, generator) for _ in range(2)]
    views += [augment_view(x, spec.slots, settings, settings.local_size, settings.local_scale, generator)
              for _ in range(settings.n_local)]
    return [normalize(v, spec) for v in views]


def to_slots(crops, stains: Sequence[str], slots: Sequence[str]):
    """(B, C, H, W) crops of ``stains`` -> (B, len(slots), H, W): each slot takes its stain; a missing one stays zero."""
    import numpy as np

    out = np.zeros((crops.shape[0], len(slots)) + tuple(crops.shape[2:]), crops.dtype)
    for slot, stain in enumerate(slots):
        if stain in stains:
            out[:, slot] = crops[:, list(stains).index(stain)]
    return out
