"""The image the engine works on: CellImage ((C, Y, X) float32 in [0, 1], a stain per channel), the
RawImage it is made from, and the checks and scaling in between (``make_cell_image``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DinolocError
from ..files import hash_array
from ..stains import PROTEIN, channel_of, parse_channel_spec, validate_stains

#: Percentiles that map to 0 and 1 when scaling 16-bit and float images.
SCALE_PERCENTILES = (0.1, 99.9)


@dataclass(frozen=True, eq=False)
class CellImage:
    """A multichannel image ready for the engine. Compare images by ``content_hash``."""

    data: np.ndarray  # (C, Y, X) float32, each channel scaled to [0, 1]
    stains: tuple[str, ...]  # stain of each channel (stains.STAINS)
    name: str  # short name for the CSV "image" column
    content_hash: str  # sha256 of the raw pixels as read, before scaling
    notes: tuple[str, ...] = ()  # things to tell the user about how the file was read

    def __post_init__(self) -> None:
        if self.data.ndim != 3 or self.data.dtype != np.float32:
            raise ValueError(f"CellImage.data must be (C, Y, X) float32, got {self.data.shape} {self.data.dtype}")
        if len(self.stains) != self.data.shape[0]:
            raise ValueError(f"{len(self.stains)} stains for {self.data.shape[0]} channels")

    @property
    def n_channels(self) -> int:
        return int(self.data.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.data.shape[1]), int(self.data.shape[2]))

    def channel_index(self, stain: str) -> int | None:
        """Index of the channel holding ``stain``, or None when the image has no such channel."""
        return channel_of(stain, self.stains)

    def channel(self, stain: str) -> np.ndarray | None:
        """The (Y, X) pixels of ``stain``, or None when the image has no such channel."""
        index = self.channel_index(stain)
        return None if index is None else self.data[index]

    def with_stains(self, stains: Sequence[str] | str) -> "CellImage":
        """The same pixels with other stains (a sequence, or a spec such as 'protein=1,nucleus=0')."""
        resolved = resolve_stains(stains, self.n_channels, self.name)
        check_protein_not_empty(self.data, resolved, self.name)
        return CellImage(self.data, resolved, self.name, self.content_hash, self.notes)


@dataclass(frozen=True, eq=False)
class RawImage:
    """Pixels as stored in the file(s), channels first, before any scaling."""

    array: np.ndarray  # (C, Y, X), original dtype
    name: str
    notes: tuple[str, ...] = ()
    default_stains: tuple[str, ...] | None = None  # known from the file kind, else None

    @property
    def n_channels(self) -> int:
        return int(self.array.shape[0])


def make_cell_image(array: np.ndarray, stains: Sequence[str], name: str = "image", notes: Sequence[str] = ()) -> CellImage:
    """Check ``array`` ((C, Y, X) or (Y, X)) and scale each channel to [0, 1].

    uint8 is divided by 255 (its brightness is meaningful); other types are scaled per channel
    between the 0.1 and 99.9 percentiles, so a few hot pixels do not darken the image.
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise DinolocError(f"{name}: expected channels, Y, X pixels but got shape {array.shape}.")
    check_dtype(array, Path(name))
    stains = resolve_stains(stains, array.shape[0], name)
    check_finite(array, name)
    check_not_empty(array, name)
    data = scale_channels(array)
    check_protein_not_empty(data, stains, name, raw=array)
    return CellImage(data, stains, name, hash_array(array), tuple(notes))

def resolve_stains(stains: Sequence[str] | str, n_channels: int, name: str) -> tuple[str, ...]:
    """A spec ('protein=1,nucleus=0'), a comma list ('nucleus,protein') or a sequence."""
    if isinstance(stains, str):
        if "=" in stains:
            return validate_stains(parse_channel_spec(stains, n_channels), n_channels, need_protein=False)
        stains = [s.strip() for s in stains.split(",") if s.strip()]
    if len(stains) != n_channels:
        raise DinolocError(
            f"{len(stains)} stain(s) given ({', '.join(stains)}) but {name} has {n_channels} channel(s): "
            "name the stain of every channel, e.g. 'protein=1,nucleus=0' (unnamed channels become 'other')."
        )
    return validate_stains(stains, n_channels, need_protein=False)


def check_dtype(array: np.ndarray, path: Path) -> None:
    if array.dtype.kind not in "buif":
        raise DinolocError(
            f"{path.name} holds {array.dtype} values, which are not image intensities: save it as "
            "8- or 16-bit integers or floats."
        )


def check_finite(array: np.ndarray, name: str) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(array.size - np.isfinite(array).sum())
        raise DinolocError(
            f"{name} has {bad} NaN or infinite pixel value(s): fix or replace them (e.g. with 0) "
            "before loading the image."
        )


def check_not_empty(array: np.ndarray, name: str) -> None:
    if not array.any():
        raise DinolocError(f"{name} is empty: every pixel is 0. Check that the right file was chosen and that it was exported correctly.")


def check_protein_not_empty(data: np.ndarray, stains: Sequence[str], name: str, raw: np.ndarray | None = None) -> None:
    index = channel_of(PROTEIN, stains)
    if index is None:
        return
    pixels = raw[index] if raw is not None else data[index]
    if pixels.min() == pixels.max():
        raise DinolocError(
            f"The protein channel (channel {index}) of {name} is empty: all its pixels equal {pixels.flat[0]}. "
            "Check which channel holds the protein and assign it (e.g. 'protein=1,nucleus=0')."
        )


def scale_channels(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255.0)
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    return np.stack([scale_by_percentiles(channel) for channel in array]).astype(np.float32, copy=False)


def scale_by_percentiles(channel: np.ndarray) -> np.ndarray:
    channel = channel.astype(np.float32)
    low, high = percentile_limits(channel[sample_slices(channel.shape)])
    if high <= low:  # sparse signal: fewer than 0.1 % of pixels above the background
        high = float(channel.max())
    return scale_with_limits(channel, low, high)


def sample_slices(shape) -> tuple[slice, slice]:
    """A strided sample of a (Y, X) plane: the same percentiles to a fraction of a grey level, much faster.
    (A tiled screen image samples the whole plane the same way, so its tiles share one scaling.)"""
    step = max(1, int(np.sqrt(int(shape[-2]) * int(shape[-1]) / 1_000_000)))
    return slice(None, None, step), slice(None, None, step)


def percentile_limits(sample: np.ndarray) -> tuple[float, float]:
    """The grey levels that scale to 0 and 1 (``SCALE_PERCENTILES`` of the strided ``sample``)."""
    low, high = np.percentile(np.asarray(sample, np.float32), SCALE_PERCENTILES)
    return float(low), float(high)


def scale_with_limits(channel: np.ndarray, low: float, high: float) -> np.ndarray:
    channel = channel.astype(np.float32)
    if high <= low:
        return np.zeros_like(channel)
    scaled = (channel - np.float32(low)) / np.float32(high - low)
    return np.clip(scaled, 0.0, 1.0, out=scaled)
