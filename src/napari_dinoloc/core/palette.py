"""Colours for classes and confidence that stay readable on top of fluorescence channels.

Channels are shown in pure hues at every brightness (a dim protein is dark green): green, blue,
red, magenta, yellow and cyan, napari's channel colours. A class drawn in one of them hides the
stain or looks like it, and grey (or white) looks like "no class". So class colours keep a
perceptual distance (CIEDE2000 in CIELAB) of at least ``MIN_CHANNEL_DISTANCE`` from every shade of
those hues, a chroma of at least ``MIN_CHROMA`` (not grey), and apart from each other; the tests check it.
What is left are the in-between hues: orange, azure, rose, violet and their lighter shades.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

#: The hues image channels are shown in (napari's channel colours; HPA: green protein, blue nucleus,
#: red microtubules, yellow ER).
CHANNEL_COLOURS = {"green": "#00ff00", "blue": "#0000ff", "red": "#ff0000", "magenta": "#ff00ff",
                   "yellow": "#ffff00", "cyan": "#00ffff"}
MIN_CHANNEL_DISTANCE = 20.0  # CIEDE2000; about 2 is just noticeable, 10+ clearly another colour
MIN_CHROMA = 40.0            # CIELAB chroma; greys, white and black have about 0
MIN_CLASS_DISTANCE = 10.0    # between two class colours

#: Class colours, most distinct first: the first 10 differ by at least 13 (CIEDE2000) from each other.
CLASS_PALETTE = (
    "#ff8000", "#2080ff", "#ff3080", "#e0b0ff", "#ffa090", "#50c0ff",
    "#9080d0", "#ffc070", "#ff90c0", "#c08020", "#a0b0ff", "#ff7080",
)
#: Confidence from unsure (warm) to sure (cool), and the lower edge of each bin.
CONFIDENCE_COLOURS = ("#ff3080", "#ff8000", "#ffc070", "#a0b0ff", "#2080ff")
CONFIDENCE_EDGES = (0.0, 0.5, 0.65, 0.8, 0.9)
#: Outlines of cells the model has not seen the like of: white, which no class uses.
UNFAMILIAR_COLOUR = "#ffffff"


def class_colour(index: int) -> str:
    return CLASS_PALETTE[index % len(CLASS_PALETTE)]


def confidence_bins(confidence: np.ndarray) -> np.ndarray:
    """(N,) bin 1..len(CONFIDENCE_COLOURS) of each confidence (0 stays for background)."""
    return np.searchsorted(CONFIDENCE_EDGES, np.asarray(confidence, dtype=np.float64), side="right").astype(np.uint8)


def confidence_legend() -> list[tuple[str, str]]:
    """(label, colour) of each confidence bin, e.g. ('0.90–1.00', '#2080ff')."""
    uppers = (*CONFIDENCE_EDGES[1:], 1.0)
    return [(f"{low:.2f}–{high:.2f}", colour) for low, high, colour in zip(CONFIDENCE_EDGES, uppers, CONFIDENCE_COLOURS)]


# ---- measuring colours ---------------------------------------------------------------------------
def to_lab(colours: Iterable[str]) -> np.ndarray:
    """(N, 3) CIELAB of '#rrggbb' colours."""
    from skimage.color import rgb2lab

    rgb = np.array([[int(c[i:i + 2], 16) / 255 for i in (1, 3, 5)] for c in colours], dtype=np.float64)
    return rgb2lab(rgb[None])[0]


def colour_difference(a: str, b: str) -> float:
    """CIEDE2000 difference of two '#rrggbb' colours."""
    from skimage.color import deltaE_ciede2000

    lab = to_lab([a, b])
    return float(deltaE_ciede2000(lab[0], lab[1]))


def chroma(colour: str) -> float:
    lab = to_lab([colour])[0]
    return float(np.hypot(lab[1], lab[2]))


def channel_shades(colours: Sequence[str] = tuple(CHANNEL_COLOURS.values()), steps: int = 15) -> list[str]:
    """Each channel colour from 30 % to full brightness: how a dim to bright stain looks."""
    shades = []
    for colour in colours:
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)
        for t in np.linspace(0.3, 1.0, steps):
            shades.append("#%02x%02x%02x" % tuple(np.round(rgb * t).astype(int)))
    return shades


def distance_to_channels(colour: str, channels: Sequence[str] = tuple(CHANNEL_COLOURS.values())) -> float:
    """The smallest CIEDE2000 difference between ``colour`` and any shade of the channel colours."""
    from skimage.color import deltaE_ciede2000

    shades = to_lab(channel_shades(channels))
    return float(deltaE_ciede2000(np.repeat(to_lab([colour]), len(shades), axis=0), shades).min())


def hides_a_stain(colour: str) -> bool:
    """True for colours a class should not have: near a channel's hue, or grey."""
    return distance_to_channels(colour) < MIN_CHANNEL_DISTANCE or chroma(colour) < MIN_CHROMA
