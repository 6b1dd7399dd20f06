"""Stains, the meaning of each image channel, and how users write them down."""

from __future__ import annotations

from typing import Sequence

from .errors import DinolocError

PROTEIN, NUCLEUS, MICROTUBULES, ER, OTHER = "protein", "nucleus", "microtubules", "er", "other"
#: Cell Painting dyes: Hoechst (DNA), SYTO 14 (RNA, nucleoli), concanavalin A (ER), phalloidin + WGA
#: (AGP: actin, Golgi, plasma membrane), MitoTracker (Mito). ER is the same stain name as HPA's.
DNA, RNA, AGP, MITO = "dna", "rna", "agp", "mito"
STAINS = (PROTEIN, NUCLEUS, MICROTUBULES, ER, DNA, RNA, AGP, MITO, OTHER)

#: The true channel order of the common public Cell Painting sets (JUMP, cpg0000...): DNA, RNA, ER, AGP,
#: Mito. One released analysis listed them in another order: check a set's metadata before relying on it.
CELL_PAINTING_SLOTS = (DNA, RNA, ER, AGP, MITO)
#: Stains that mark the same structure: a Cell Painting DNA channel is the nucleus stain (segmentation,
#: a model's nucleus slot), and an HPA nucleus channel fills a Cell Painting model's DNA slot.
SAME_ROLE = {NUCLEUS: DNA, DNA: NUCLEUS}
#: One entry per structure, in a fixed order (the nucleus role covers DNA): bag-of-channels' order.
STAIN_ROLES = (PROTEIN, NUCLEUS, MICROTUBULES, ER, RNA, AGP, MITO)

#: Kaggle/HPA channel order used by DINO4Cells: the protein is slot 1.
HPA_SLOTS = (MICROTUBULES, PROTEIN, NUCLEUS, ER)
#: Default stain -> colour slot of an ImageNet RGB model (the HPA composite convention).
RGB_SLOTS = (MICROTUBULES, PROTEIN, NUCLEUS)
#: HPA single-stain file suffixes (<id>_red.png ...).
HPA_FILE_COLOURS = {"red": MICROTUBULES, "green": PROTEIN, "blue": NUCLEUS, "yellow": ER}


def parse_channel_spec(spec: str, n_channels: int) -> tuple[str, ...]:
    """``"protein=1,nucleus=0"`` -> the stain of every channel (unnamed channels are 'other')."""
    stains = [OTHER] * n_channels
    seen: set[str] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, index = part.partition("=")
        name = name.strip().lower()
        if not sep or name not in STAINS or not index.strip().lstrip("-").isdigit():
            raise DinolocError(
                f"Cannot read the channel assignment {part!r}: write stain=channel pairs such as "
                f"'protein=1,nucleus=0' with stains from {', '.join(STAINS)}."
            )
        channel = int(index)
        if not 0 <= channel < n_channels:
            raise DinolocError(
                f"The channel assignment {part!r} names channel {channel}, but the image has "
                f"{n_channels} channel(s), numbered 0 to {n_channels - 1}."
            )
        if name != OTHER and name in seen:
            raise DinolocError(f"The stain {name!r} is assigned to two channels; give each stain one channel.")
        seen.add(name)
        stains[channel] = name
    return tuple(stains)


def check_channel_spec(spec: str) -> None:
    """Refuse a misspelt ``--channels`` before any image is read (a screen would report it for every image)."""
    indices = [p.partition("=")[2].strip() for p in spec.split(",") if p.strip()]
    largest = max((int(i) for i in indices if i.lstrip("-").isdigit()), default=0)
    parse_channel_spec(spec, max(largest, 0) + 1)


def validate_stains(stains: Sequence[str], n_channels: int, need_protein: bool = True) -> tuple[str, ...]:
    stains = tuple(s.lower() for s in stains)
    if len(stains) != n_channels:
        raise DinolocError(f"{len(stains)} stain(s) given for an image with {n_channels} channel(s): name the stain of every channel.")
    unknown = [s for s in stains if s not in STAINS]
    if unknown:
        raise DinolocError(f"Unknown stain(s) {unknown}: use {', '.join(STAINS)}.")
    named = [s for s in stains if s != OTHER]
    if len(named) != len(set(named)):
        raise DinolocError("A stain is assigned to two channels; give each stain one channel.")
    if need_protein and PROTEIN not in stains:
        raise DinolocError("No channel is marked as the protein: say which channel holds the protein of interest (e.g. --channels protein=1,nucleus=0).")
    return stains


def channel_of(stain: str, stains: Sequence[str]) -> int | None:
    """The first channel holding ``stain`` (or a stain of the same role: DNA for nucleus), or None."""
    stains = tuple(stains)
    if stain in stains:
        return stains.index(stain)
    alias = SAME_ROLE.get(stain)
    return stains.index(alias) if alias in stains else None


def channel_order(needed: Sequence[str], available: Sequence[str]) -> tuple[int, ...] | None:
    """For each stain of ``needed``, the channel of ``available`` with that stain (each channel used
    once, so several 'other' channels match in order of appearance); None when a stain is missing.
    Extra channels of ``available`` are ignored."""
    unused = list(range(len(available)))
    order = []
    for stain in needed:
        channel = next((i for i in unused if available[i] == stain), None)
        if channel is None:
            return None
        unused.remove(channel)
        order.append(channel)
    return tuple(order)


def conventional_stains(n_channels: int) -> tuple[str, ...]:
    """Stains by convention for a channel count: HPA (4), RGB composites (3), nucleus + protein (2), protein (1)."""
    known = {4: HPA_SLOTS, 3: RGB_SLOTS, 2: (NUCLEUS, PROTEIN), 1: (PROTEIN,)}
    return tuple(known.get(n_channels, (OTHER,) * n_channels))
