"""Cell Painting per-channel files grouped into one image per site, each channel named by its stain.

Two naming schemes are recognised: the Phenix / JUMP one (``r01c01f01p01-ch5sk1fk1fl1.tiff``: row,
column, field, plane, then the channel number) and the NF1 Schwann-cell plates'
(``B7_01_1_3_DAPI_001.tif``: well, ..., channel, site, dye). The channel *number* of a JUMP file is
not the order of the stains: JUMP (cpg0016) stores Mito in ch1, AGP in ch2, RNA in ch3, ER in ch4
and DNA in ch5 (ch6-8: bright field). The grouped channels are put in the usual order of the public
sets, DNA, RNA, ER, AGP, Mito, then the others by number.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import numpy as np

from ..stains import AGP, CELL_PAINTING_SLOTS, DNA, ER, MITO, OTHER, RNA
from ._hpa import expand_folders

JUMP_FILE_PATTERN = re.compile(r"^(?P<id>.+?)-ch(?P<channel>\d{1,2})(?P<rest>[^.-]*)\.tiff?$", re.IGNORECASE)
NF1_FILE_PATTERN = re.compile(
    r"^(?P<well>[A-Za-z]{1,2}\d{1,2})_(?P<field>\d+)_(?P<channel>\d)_(?P<site>\d+)_(?P<dye>DAPI|GFP|RFP|CY5)_(?P<rest>\d+)"
    r"\.tiff?$", re.IGNORECASE)
#: JUMP's channel numbers (cpg0016 load_data: OrigMito ch1, OrigAGP ch2, OrigRNA ch3, OrigER ch4, OrigDNA ch5).
JUMP_CHANNEL_STAINS = {1: MITO, 2: AGP, 3: RNA, 4: ER, 5: DNA}
#: NF1 Schwann-cell Cell Painting plates: DAPI nuclei, GFP concanavalin A (ER), RFP phalloidin (actin: AGP), CY5 Mito.
NF1_DYE_STAINS = {"dapi": DNA, "gfp": ER, "rfp": AGP, "cy5": MITO}
ORDER_NOTE = ("Cell Painting channels named from the file names (JUMP numbering: ch1 Mito, ch2 AGP, ch3 RNA, "
              "ch4 ER, ch5 DNA) and ordered DNA, RNA, ER, AGP, Mito; other sources number them differently: "
              "check and rename the channels if needed.")


def cell_painting_channel(path: Path) -> tuple[tuple[Path, str], int, str] | None:
    """(site key, channel number, stain) of a Cell Painting channel file, or None for other files."""
    name = Path(path).name
    match = JUMP_FILE_PATTERN.match(name)
    if match:
        channel = int(match.group("channel"))
        return (path.parent, match.group("id")), channel, JUMP_CHANNEL_STAINS.get(channel, OTHER)
    match = NF1_FILE_PATTERN.match(name)
    if match:
        site = f"{match.group('well')}_{match.group('field')}_{match.group('site')}"
        return (path.parent, site), int(match.group("channel")), NF1_DYE_STAINS[match.group("dye").lower()]
    return None


def cell_painting_id(path: Path) -> str | None:
    found = cell_painting_channel(Path(path))
    return found[0][1] if found else None


def _stain_order(found) -> tuple[int, int]:
    _, channel, stain = found
    rank = CELL_PAINTING_SLOTS.index(stain) if stain in CELL_PAINTING_SLOTS else len(CELL_PAINTING_SLOTS)
    return rank, channel


def find_cell_painting_groups(paths: Iterable[str | Path]) -> list[list[Path]]:
    """Cell Painting channel files grouped by site (folders searched, not recursively), each group in
    the order DNA, RNA, ER, AGP, Mito, then other channels by number; sorted by folder and site."""
    groups: dict[tuple[Path, str], list[tuple[Path, int, str]]] = {}
    for path in expand_folders(paths):
        found = cell_painting_channel(path)
        if found:
            groups.setdefault(found[0], []).append((path, found[1], found[2]))
    return [[path for path, *_ in sorted(files, key=_stain_order)]
            for _, files in sorted(groups.items(), key=lambda item: (str(item[0][0]), item[0][1]))]


def cell_painting_siblings(path: Path) -> list[Path]:
    """The channel files of the same site beside ``path`` (in stain order), or ``[path]``."""
    if cell_painting_channel(path) is None or not path.parent.is_dir():
        return [path]
    resolved = path.resolve()
    return next((g for g in find_cell_painting_groups([path.parent]) if resolved in [p.resolve() for p in g]), [path])


def cell_painting_stains(paths: Iterable[Path]) -> tuple[str, ...] | None:
    """The stain of every file when all are Cell Painting channel files (each named stain once), else None."""
    found = [cell_painting_channel(Path(p)) for p in paths]
    if not found or None in found:
        return None
    stains = tuple(f[2] for f in found)
    named = [s for s in stains if s != OTHER]
    return stains if len(named) == len(set(named)) else None


def looks_like_bright_field(channel: np.ndarray) -> bool:
    """True for a transmitted-light channel: its background (median) is bright, unlike any fluorescence stain.

    Some plates keep bright field in a channel number JUMP uses for a dye (e.g. ch1): such a channel must
    not be fed to a model as that dye.
    """
    step = max(1, int(np.sqrt(channel.size / 250_000)))
    sample = channel[::step, ::step].astype(np.float32)
    low, middle, high = np.percentile(sample, (1, 50, 99))
    return bool(high > low and (middle - low) / (high - low) > 0.3)


def name_channels(paths, channels) -> tuple[tuple[str, ...] | None, list[str]]:
    """The stains of Cell Painting channel files (bright-field channels as 'other') and notes, or (None, [])."""
    stains = cell_painting_stains(paths)
    if stains is None:
        return None, []
    notes = [ORDER_NOTE]
    bright = [i for i, (stain, channel) in enumerate(zip(stains, channels)) if stain != OTHER and looks_like_bright_field(channel)]
    for index in bright:
        notes.append(f"{Path(paths[index]).name} looks like bright field (a bright background), not {stains[index].upper()}: "
                     "named 'other'.")
    return tuple(OTHER if i in bright else s for i, s in enumerate(stains)), notes
