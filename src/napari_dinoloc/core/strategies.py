"""Channel strategies: how the stains of an image fill the input slots of a backbone.

A strategy turns a batch of crops (B, C, H, W) in raw [0, 1] intensity into one or more views
(B, S, H, W), S = the backbone's slots. Each view is embedded and the view embeddings are concatenated;
a view given as None (a stain role the image lacks) is not run through the model and embeds as zeros.
Zero-filling happens here, before normalisation: a zero slot is "no signal" in the stain's own scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from . import defaults
from .errors import DinolocError
from .registry import Registry
from .stains import OTHER, PROTEIN, STAIN_ROLES, STAINS, channel_of

ISSELMANN_2026 = ("Isselmann, Göksu, Neumann, Weinmann, Using Deep Learning Models Pretrained by "
                  "Self-Supervised Learning for Protein Localization (arXiv 2604.10970)")
DINO4CELLS = "Doron, Moutakanni et al., DINO4Cells (PLOS Comp Biol)"

#: The order of replicate's views: fixed by stain, not by channel number, so that two images whose
#: channels are stored in a different order give comparable embeddings (heads trained on one apply to the other).
VIEW_STAIN_ORDER = tuple(s for s in STAINS if s != OTHER)


@dataclass(frozen=True)
class ChannelStrategy:
    name: str
    description: str
    paper: str
    make_views: Callable = None  # (crops, stains, slots) -> list of (B, S, H, W) tensors

    def views(self, crops, stains: Sequence[str], slots: Sequence[str]) -> list:
        return self.make_views(crops, tuple(stains), tuple(slots))

    def count_views(self, stains: Sequence[str], slots: Sequence[str]) -> int:
        """How many views (embeddings to concatenate) an image with these stains gives."""
        import torch

        return len(self.views(torch.zeros(1, len(stains), 1, 1), stains, slots))


def _fill_all_slots(crops, channel: int, n_slots: int):
    return crops[:, channel:channel + 1].expand(-1, n_slots, -1, -1)


def replicate_views(crops, stains: tuple[str, ...], slots: tuple[str, ...]) -> list:
    """One view per named stain, that stain copied into every slot; 'other' channels are skipped."""
    present = [s for s in VIEW_STAIN_ORDER if s in stains]
    if not present:
        raise DinolocError("No channel has a known stain: name the channels (e.g. --channels protein=1,nucleus=0).")
    return [_fill_all_slots(crops, channel_of(s, stains), len(slots)) for s in present]


def natural_views(crops, stains: tuple[str, ...], slots: tuple[str, ...]) -> list:
    """One view: every stain in the slot of the same stain, zeros in slots whose stain the image lacks."""
    import torch

    batch, _, height, width = crops.shape
    view = torch.zeros(batch, len(slots), height, width, dtype=crops.dtype, device=crops.device)
    filled = 0
    for slot, stain in enumerate(slots):
        channel = channel_of(stain, stains)
        if channel is not None and stain != OTHER:
            view[:, slot] = crops[:, channel]
            filled += 1
    if not filled:
        raise DinolocError(
            f"None of the image's stains ({', '.join(stains)}) matches an input slot of the backbone "
            f"({', '.join(slots)}). Name the channels, or use the 'replicate' or 'protein-only' strategy."
        )
    return [view]


def bag_of_channels_views(crops, stains: tuple[str, ...], slots: tuple[str, ...]) -> list:
    """One view per stain role in the fixed STAIN_ROLES order, the stain copied into every slot (one slot
    for a channel-adaptive model); None for a role the image lacks. Same width for every image."""
    views = []
    for role in STAIN_ROLES:
        channel = channel_of(role, stains)
        views.append(None if channel is None else _fill_all_slots(crops, channel, len(slots)))
    if all(view is None for view in views):
        raise DinolocError("No channel has a known stain: name the channels (e.g. --channels protein=1,nucleus=0).")
    return views


def all_stains_views(crops, stains: tuple[str, ...], slots: tuple[str, ...]) -> list:
    """One view holding every named stain, in the fixed STAIN_ROLES order: for channel-agnostic backbones
    (CA-MAE), which take any number of stains; 'other' channels are skipped."""
    channels = [channel_of(role, stains) for role in STAIN_ROLES]
    channels = [c for c in channels if c is not None]
    if not channels:
        raise DinolocError("No channel has a known stain: name the channels (e.g. --channels protein=1,nucleus=0).")
    return [crops[:, channels]]


def protein_only_views(crops, stains: tuple[str, ...], slots: tuple[str, ...]) -> list:
    """One view: the protein channel copied into every slot."""
    channel = channel_of(PROTEIN, stains)
    if channel is None:
        raise DinolocError("The 'protein-only' strategy needs a protein channel: say which channel holds it (e.g. --channels protein=1).")
    return [_fill_all_slots(crops, channel, len(slots))]


STRATEGIES: Registry[ChannelStrategy] = Registry("channel strategy", default=defaults.STRATEGY)
for _strategy in (
    ChannelStrategy(
        "natural",
        "Each stain goes into the input slot of the same stain (protein→protein, nucleus→nucleus); "
        "slots without a matching stain get zeros. One embedding.",
        f"{ISSELMANN_2026}: 'natural mapping', their best strategy", natural_views,
    ),
    ChannelStrategy(
        "replicate",
        "Each stain alone, copied into every input slot, embedded separately; the embeddings are "
        "concatenated in the order protein, nucleus, microtubules, ER, DNA, RNA, AGP, Mito ('other' channels are skipped).",
        f"{ISSELMANN_2026}: channel-wise embedding; {DINO4CELLS}: ImageNet models on multichannel images",
        replicate_views,
    ),
    ChannelStrategy(
        "protein-only",
        "The protein channel copied into every input slot. One embedding.",
        f"{ISSELMANN_2026}: channel replication", protein_only_views,
    ),
    ChannelStrategy(
        "bag-of-channels",
        "Each stain alone through the model (one slot, or copied into every slot), the embeddings concatenated "
        f"in the fixed order {', '.join(STAIN_ROLES)} (DNA counts as nucleus), zeros for a stain the image "
        "lacks: the same width for images with any number of stains.",
        "Channel-Adaptive DINO / Cell-DINO 'bag of channels'; benchmark: Chen et al., CHAMMI (NeurIPS 2023, "
        "arXiv 2310.19224)", bag_of_channels_views,
    ),
    ChannelStrategy(
        "all-stains",
        "Every named stain at once, in the order " + ", ".join(STAIN_ROLES) + ", as many input channels as the "
        "image has stains: for channel-agnostic backbones (ca-mae-vits16). One embedding (or one per stain "
        "with the 'stain-means' embedding).",
        "Kraus et al., channel-agnostic MAE (CVPR 2024, arXiv 2404.10242)", all_stains_views,
    ),
):
    STRATEGIES.register(_strategy.name, _strategy)
