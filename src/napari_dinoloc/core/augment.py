"""Cell-DINO augmentations on batches of single-cell crops, for fine-tuning.

Crops are (B, C, S, S) float tensors in raw [0, 1] intensity, one stain per channel, before the
channel strategy and normalisation. The augmentations follow DINO4Cells / Cell-DINO (Doron,
Moutakanni et al.): the 8 symmetries of the square (flips and 90° rotations: a cell has no
"up"), per-channel brightness and contrast jitter with factors max(N(1, sigma), 0.5), dropping one
non-protein channel (p 0.2) and rescaling the protein channel by U(0, 2) (p 0.2).

Rules the fine-tuning relies on:
- the protein channel is never dropped (it is what the class describes);
- shapes never change (crops are square, so rotations keep (S, S));
- background that crop masking set to zero stays zero (jitter would otherwise paint it);
- every random draw comes from the ``generator`` passed in, so a seeded run repeats exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .stains import PROTEIN, channel_of

MIN_JITTER_FACTOR = 0.5  # DINO4Cells clips its N(1, sigma) factors here


@dataclass(frozen=True)
class AugmentSettings:
    symmetries: bool = True        # random flips + 90° rotations (the dihedral group of the square)
    brightness: float = 0.2        # sigma of the per-channel brightness factor (0 = off)
    contrast: float = 0.2          # sigma of the per-channel contrast factor (0 = off)
    drop_channel_p: float = 0.2    # probability of zeroing one non-protein channel
    rescale_protein_p: float = 0.2  # probability of multiplying the protein channel by U(0, 2)


NO_AUGMENTATION = AugmentSettings(symmetries=False, brightness=0.0, contrast=0.0, drop_channel_p=0.0, rescale_protein_p=0.0)


def augment_crops(crops, stains: Sequence[str], settings: AugmentSettings = AugmentSettings(), generator=None):
    """A new (B, C, S, S) tensor: ``crops`` augmented per cell. ``crops`` itself is not changed."""
    x = crops.clone()
    foreground = (x != 0).any(dim=1, keepdim=True)  # masked background stays exactly zero
    x = jitter_brightness(x, settings.brightness, generator)
    x = jitter_contrast(x, settings.contrast, generator)
    x = rescale_protein(x, stains, settings.rescale_protein_p, generator)
    x = drop_one_channel(x, stains, settings.drop_channel_p, generator)
    x = (x * foreground).clamp_(0.0, 1.0)
    return random_symmetry(x, generator) if settings.symmetries else x


def _uniform(shape, generator, device):
    import torch

    return torch.rand(shape, generator=generator).to(device)


def _jitter_factors(batch: int, channels: int, sigma: float, generator, device):
    import torch

    factors = 1.0 + sigma * torch.randn((batch, channels, 1, 1), generator=generator)
    return factors.clamp_(min=MIN_JITTER_FACTOR).to(device)


def jitter_brightness(x, sigma: float, generator=None):
    """Each channel of each crop times max(N(1, sigma), 0.5) (torchvision's adjust_brightness)."""
    if sigma <= 0:
        return x
    return x * _jitter_factors(x.shape[0], x.shape[1], sigma, generator, x.device).to(x.dtype)


def jitter_contrast(x, sigma: float, generator=None):
    """Each channel blended with its own mean: f * x + (1 - f) * mean (torchvision's adjust_contrast)."""
    if sigma <= 0:
        return x
    factors = _jitter_factors(x.shape[0], x.shape[1], sigma, generator, x.device).to(x.dtype)
    mean = x.mean(dim=(-2, -1), keepdim=True)
    return factors * x + (1.0 - factors) * mean


def rescale_protein(x, stains: Sequence[str], p: float, generator=None):
    """With probability p per crop, the protein channel times U(0, 2) (Cell-DINO's rescale_protein)."""
    channel = channel_of(PROTEIN, stains)
    if p <= 0 or channel is None:
        return x
    chosen = _uniform((x.shape[0],), generator, x.device) < p
    factor = 2.0 * _uniform((x.shape[0],), generator, x.device)
    scale = x.new_ones(x.shape[0])
    scale[chosen] = factor[chosen].to(x.dtype)
    x = x.clone()
    x[:, channel] *= scale.view(-1, 1, 1)
    return x


def droppable_channels(stains: Sequence[str]) -> list[int]:
    """Channels augmentation may zero: every channel except the protein (as DINO4Cells: 0, 2, 3 of 4)."""
    return [i for i, stain in enumerate(stains) if stain != PROTEIN]


def drop_one_channel(x, stains: Sequence[str], p: float, generator=None):
    """With probability p per crop, zero one non-protein channel chosen uniformly."""
    import torch

    candidates = droppable_channels(stains)
    if p <= 0 or not candidates:
        return x
    chosen = _uniform((x.shape[0],), generator, x.device) < p
    pick = torch.randint(len(candidates), (x.shape[0],), generator=generator).to(x.device)
    keep = x.new_ones(x.shape[0], x.shape[1])
    rows = torch.nonzero(chosen).flatten()
    channels = torch.tensor(candidates, device=x.device)[pick[rows]]
    keep[rows, channels] = 0.0
    return x * keep[:, :, None, None]


def random_symmetry(x, generator=None):
    """Each crop in one of the 8 symmetries of the square, drawn uniformly (flip, then 0-3 quarter turns)."""
    import torch

    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"crops must be square for rotations, got {tuple(x.shape[-2:])}")
    flips = torch.randint(2, (x.shape[0],), generator=generator).to(x.device)
    turns = torch.randint(4, (x.shape[0],), generator=generator).to(x.device)
    out = torch.where(flips.view(-1, 1, 1, 1).bool(), x.flip(-1), x)
    for k in (1, 2, 3):
        rows = turns == k
        if rows.any():
            out[rows] = torch.rot90(out[rows], k, dims=(-2, -1))
    return out
