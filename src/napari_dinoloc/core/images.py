"""Reading microscopy images into a :class:`CellImage`: (C, Y, X) float32 in [0, 1], a stain per channel.

Reading happens in two steps so that front ends can ask the user about stains in between:
:func:`read_image` returns the pixels as stored (:class:`RawImage`, channels first), and
:func:`make_cell_image` checks and scales them once the stains are known. :func:`load_cell_image`
does both.

Supported: TIFF / OME-TIFF / ImageJ TIFF (tifffile, axes from the file's metadata when it has
them), PNG / JPEG and other formats imageio reads, RGB composites, and one file per stain
(Human Protein Atlas style ``<id>_red.png``, ``_green``, ``_blue``, ``_yellow``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import DinolocError
from .files import hash_array
from .stains import HPA_FILE_COLOURS, PROTEIN, RGB_SLOTS, STAINS, parse_channel_spec, validate_stains

#: More channels than this on an axis and it is taken for a spatial or Z axis, not channels.
MAX_CHANNELS = 8
#: Percentiles that map to 0 and 1 when scaling 16-bit and float images.
SCALE_PERCENTILES = (0.1, 99.9)
TIFF_SUFFIXES = (".tif", ".tiff")
HPA_FILE_PATTERN = re.compile(
    r"^(?P<id>.+)_(?P<colour>red|green|blue|yellow)\.(png|jpe?g|tiff?)$", re.IGNORECASE
)
#: HPA colours in the Kaggle / DINO4Cells channel order.
HPA_COLOUR_ORDER = ("red", "green", "blue", "yellow")


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
        try:
            return self.stains.index(stain)
        except ValueError:
            return None

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


# ----------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------


def read_image(source: "str | Path | Sequence[str | Path]", channel_axis: int | None = None) -> RawImage:
    """Read one image file, an HPA stain group, or a list of single-channel files (one per channel).

    ``channel_axis`` indexes the array as stored (``tifffile.imread(path).shape``); give it when
    the layout cannot be told from the file. A single HPA file such as ``<id>_green.png`` brings in
    its sibling stain files from the same folder.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        siblings = hpa_siblings(path)
        if len(siblings) > 1:
            raw = read_channel_files(siblings)
            note = f"Read the {len(siblings)} HPA stain files of {raw.name} ({', '.join(p.name for p in siblings)})."
            return RawImage(raw.array, raw.name, (note,) + raw.notes, raw.default_stains)
        return read_single_file(path, channel_axis)
    paths = [Path(p) for p in source]
    if not paths:
        raise DinolocError("No image file was given: choose at least one file.")
    if len(paths) == 1:
        return read_single_file(paths[0], channel_axis)
    if channel_axis is not None:
        raise DinolocError("A channel axis cannot be given for a list of files: each file is one channel.")
    return read_channel_files(paths)


def read_single_file(path: Path, channel_axis: int | None = None) -> RawImage:
    check_file_exists(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        array, axes, rgb_kind, notes = read_tiff(path)
    else:
        array, axes, rgb_kind, notes = read_with_imageio(path)
    check_dtype(array, path)
    name = image_name(path)
    if rgb_kind is not None and channel_axis is None:
        return rgb_to_raw(array, rgb_kind, name, notes)
    cyx, layout_notes = to_channels_first(array, axes, channel_axis, name)
    colour = hpa_colour(path)
    default = (HPA_FILE_COLOURS[colour],) if colour and cyx.shape[0] == 1 else None
    return RawImage(cyx, name, tuple(notes) + tuple(layout_notes), default)


def read_channel_files(paths: Sequence[Path]) -> RawImage:
    """One channel per file; the files must have the same height and width."""
    channels, notes = [], []
    for path in paths:
        raw = read_single_file(path)
        channels.append(single_channel_of(raw, path))
        notes.extend(n for n in raw.notes if n not in notes)
    shapes = {c.shape for c in channels}
    if len(shapes) > 1:
        listing = ", ".join(f"{p.name} {c.shape}" for p, c in zip(paths, channels))
        raise DinolocError(f"The channel files differ in size ({listing}): choose files of one field of view.")
    dtypes = {c.dtype for c in channels}
    dtype = channels[0].dtype if len(dtypes) == 1 else np.result_type(*dtypes)
    array = np.stack([c.astype(dtype, copy=False) for c in channels])
    colours = [hpa_colour(p) for p in paths]
    default = None
    if all(colours) and len(set(colours)) == len(colours):
        default = tuple(HPA_FILE_COLOURS[c] for c in colours)
    ids = {hpa_id(p) for p in paths}
    name = ids.pop() if len(ids) == 1 and None not in ids else image_name(paths[0])
    return RawImage(array, name, tuple(notes), default)


def single_channel_of(raw: RawImage, path: Path) -> np.ndarray:
    """The one channel of a per-stain file. Colour-saved stain files keep their brightest colour."""
    if raw.n_channels == 1:
        return raw.array[0]
    if raw.default_stains == RGB_SLOTS:
        # HPA stain images downloaded as colour files hold the stain in one colour (or all three).
        return raw.array.max(axis=0)
    raise DinolocError(
        f"{path.name} has {raw.n_channels} channels, but each file in a list must hold one channel. "
        "Open a multichannel file on its own instead."
    )


def read_tiff(path: Path) -> tuple[np.ndarray, str | None, str | None, list[str]]:
    """Pixels, tifffile's axes string, 'rgb'/'rgba' for colour composites, and notes."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array = series.asarray()
            axes = series.axes
            page = series.pages[0] if series.pages else tif.pages[0]
            photometric = int(getattr(page, "photometric", 0) or 0)
            contiguous = int(getattr(page, "planarconfig", 1) or 1) == 1
    except Exception as exc:  # tifffile raises many kinds of errors on broken files
        raise unreadable(path, exc) from exc
    rgb_kind = tiff_rgb_kind(array, axes, photometric, contiguous)
    return array, axes, rgb_kind, []


def tiff_rgb_kind(array: np.ndarray, axes: str, photometric: int, contiguous: bool) -> str | None:
    """Only 8-bit, pixel-interleaved RGB TIFFs are taken for colour composites: tifffile itself
    writes any 3- or 4-channel CYX array as planar 'RGB', which is not a composite."""
    is_rgb = photometric == 2 and contiguous and array.dtype == np.uint8
    if not is_rgb or array.ndim != 3 or axes[-1] != "S" or array.shape[-1] not in (3, 4):
        return None
    if array.shape[-1] == 4 and array[..., 3].min() != array[..., 3].max():
        return None  # a varying 4th channel is likely data, not transparency: keep all four
    return "rgb" if array.shape[-1] == 3 else "rgba"


def read_with_imageio(path: Path) -> tuple[np.ndarray, str | None, str | None, list[str]]:
    import imageio.v3 as iio

    try:
        array = np.asarray(iio.imread(path))
    except Exception as exc:
        raise unreadable(path, exc) from exc
    notes: list[str] = []
    if array.ndim == 3 and array.shape[-1] == 2:  # grey + alpha
        array = array[..., 0]
        notes.append("Alpha channel dropped.")
    rgb_kind = None
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        rgb_kind = "rgb" if array.shape[-1] == 3 else "rgba"
    return array, None, rgb_kind, notes


def rgb_to_raw(array: np.ndarray, rgb_kind: str, name: str, notes: list[str]) -> RawImage:
    """(Y, X, 3|4) colour composite -> channels first; grey images saved as RGB become one channel."""
    notes = list(notes)
    if rgb_kind == "rgba":
        notes.append("Alpha (transparency) channel dropped.")
    cyx = np.moveaxis(array[..., :3], -1, 0)
    if np.array_equal(cyx[0], cyx[1]) and np.array_equal(cyx[0], cyx[2]):
        notes.append("The red, green and blue channels are identical: read as one grey channel.")
        return RawImage(cyx[:1].copy(), name, tuple(notes), None)
    notes.append("Read as an RGB composite (red = microtubules, green = protein, blue = nucleus).")
    return RawImage(np.ascontiguousarray(cyx), name, tuple(notes), RGB_SLOTS)


def to_channels_first(
    array: np.ndarray, axes: str | None, channel_axis: int | None, name: str
) -> tuple[np.ndarray, list[str]]:
    """Reorder to (C, Y, X); extra axes (Z, T, ...) are reduced by maximum projection."""
    if array.ndim == 2 and channel_axis is None:
        return array[None], []
    if array.ndim < 2:
        raise DinolocError(f"{name} is not an image: its pixels have shape {array.shape}.")
    if channel_axis is not None:
        return layout_from_channel_axis(array, channel_axis, name, axes)
    if axes is not None and len(axes) == array.ndim and any(a in axes for a in "CSZT"):
        return layout_from_axes(array, axes)
    if array.ndim == 3:
        return layout_from_shape(array, name), []
    raise unknown_layout(array, name, axes)


def layout_from_channel_axis(array: np.ndarray, channel_axis: int, name: str, axes: str | None):
    if not -array.ndim <= channel_axis < array.ndim:
        raise DinolocError(
            f"Channel axis {channel_axis} does not exist: {name} has shape {array.shape} "
            f"(axes 0 to {array.ndim - 1}, or -1 for the last)."
        )
    c = channel_axis % array.ndim
    others = [i for i in range(array.ndim) if i != c]
    if len(others) < 2:
        raise DinolocError(f"{name} has shape {array.shape}: after the channel axis no Y and X axes are left.")
    y, x = others[-2], others[-1]
    letters = axes if axes is not None and len(axes) == array.ndim else None
    return project_and_order(array, [c], y, x, letters)


def layout_from_axes(array: np.ndarray, axes: str) -> tuple[np.ndarray, list[str]]:
    # an axis of unknown meaning (tifffile's Q, I, ...) must not be max-projected on a guess
    if "Y" not in axes or "X" not in axes or set(axes) - set("CSZTYX"):
        raise unknown_layout(array, "the image", axes)
    channel_axes = [i for i, a in enumerate(axes) if a in "CS"]
    return project_and_order(array, channel_axes, axes.index("Y"), axes.index("X"), axes)


def project_and_order(array, channel_axes: list[int], y: int, x: int, letters: str | None):
    """Max-project every axis that is not channel/Y/X, then reshape to (C, Y, X)."""
    notes = []
    project = [i for i in range(array.ndim) if i not in channel_axes and i not in (y, x)]
    for i in project:
        label = f"{letters[i]} axis" if letters else f"Axis {i}"
        notes.append(f"{label} ({array.shape[i]} planes) reduced by maximum projection.")
    if project:
        array = array.max(axis=tuple(project), keepdims=True)
    order = channel_axes + [y, x]
    array = np.transpose(array, order + project)
    array = array.reshape(-1, array.shape[len(channel_axes)], array.shape[len(channel_axes) + 1])
    return np.ascontiguousarray(array), notes


def layout_from_shape(array: np.ndarray, name: str) -> np.ndarray:
    """3-D without metadata: the channel axis is the smaller end axis with at most MAX_CHANNELS."""
    first, last = array.shape[0], array.shape[-1]
    candidates = [(size, pos) for size, pos in ((first, 0), (last, 2)) if size <= MAX_CHANNELS]
    if not candidates:
        raise unknown_layout(array, name, None)
    _, pos = min(candidates)
    return np.ascontiguousarray(np.moveaxis(array, pos, 0))


def unknown_layout(array: np.ndarray, name: str, axes: str | None) -> DinolocError:
    described = f"shape {array.shape}" + (f" (axes {axes!r})" if axes else "")
    return DinolocError(
        f"Cannot tell which axis of {name} holds the channels: found {described}. "
        "Give the channel axis as an index into that shape (e.g. channel_axis=1 or --channel-axis 1 "
        "for a Z, C, Y, X stack); the other non-Y/X axes are reduced by maximum projection."
    )


# ----------------------------------------------------------------------------------------------
# File names and HPA groups
# ----------------------------------------------------------------------------------------------


def image_name(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def hpa_colour(path: Path) -> str | None:
    match = HPA_FILE_PATTERN.match(path.name)
    return match.group("colour").lower() if match else None


def hpa_id(path: Path) -> str | None:
    match = HPA_FILE_PATTERN.match(path.name)
    return match.group("id") if match else None


def hpa_siblings(path: Path) -> list[Path]:
    """The stain files of the same HPA id beside ``path`` (red, green, blue, yellow order)."""
    if not hpa_colour(path) or not path.parent.is_dir():
        return [path]
    return next((g for g in find_hpa_groups(path.parent.iterdir()) if path.resolve() in [p.resolve() for p in g]), [path])


def find_hpa_groups(paths: Iterable[str | Path]) -> list[list[Path]]:
    """Group HPA stain files by id: ``<id>_red.png``, ``_green``, ``_blue``, ``_yellow``.

    Folders among ``paths`` are searched (not recursively). Each group is ordered red, green,
    blue, yellow (the HPA_SLOTS order); groups are sorted by folder and id. Other files are ignored.
    """
    groups: dict[tuple[Path, str], dict[str, Path]] = {}
    for path in expand_folders(paths):
        match = HPA_FILE_PATTERN.match(path.name)
        if match:
            key = (path.parent, match.group("id"))
            groups.setdefault(key, {})[match.group("colour").lower()] = path
    return [
        [files[c] for c in HPA_COLOUR_ORDER if c in files]
        for _, files in sorted(groups.items(), key=lambda item: (str(item[0][0]), item[0][1]))
    ]


def expand_folders(paths: Iterable[str | Path]) -> list[Path]:
    found = []
    for path in map(Path, paths):
        found.extend(sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path])
    return found


# ----------------------------------------------------------------------------------------------
# Checking and scaling
# ----------------------------------------------------------------------------------------------


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


def load_cell_image(
    source: "str | Path | Sequence[str | Path]",
    stains: Sequence[str] | str | None = None,
    channel_axis: int | None = None,
) -> CellImage:
    """Read ``source`` and make a CellImage. ``stains``: a sequence, a spec such as
    'protein=1,nucleus=0', or None to use the stains the file kind implies (HPA files, RGB)."""
    raw = read_image(source, channel_axis)
    if stains is None:
        if raw.default_stains is None:
            raise DinolocError(
                f"Say which channel is which stain: {raw.name} has {raw.n_channels} channel(s) "
                f"of {raw.array.shape[1]}x{raw.array.shape[2]} pixels. Give e.g. 'protein=1,nucleus=0' "
                f"(command line: --channels protein=1,nucleus=0), with stains from {', '.join(STAINS)}."
            )
        stains = raw.default_stains
    return make_cell_image(raw.array, stains, raw.name, raw.notes)


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


def check_file_exists(path: Path) -> None:
    if not path.exists():
        raise DinolocError(f"File not found: {path}. Check the path and the file name.")
    if path.is_dir():
        raise DinolocError(f"{path} is a folder: choose an image file inside it.")


def unreadable(path: Path, exc: Exception) -> DinolocError:
    return DinolocError(
        f"Cannot read {path.name} as an image ({type(exc).__name__}: {exc}). The file may be corrupt, "
        "incomplete or not an image: open it in another viewer, or save it again as TIFF or PNG."
    )


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
    if PROTEIN not in stains:
        return
    index = list(stains).index(PROTEIN)
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
    # A strided sample gives the same percentiles to a fraction of a grey level, much faster.
    step = max(1, int(np.sqrt(channel.size / 1_000_000)))
    low, high = np.percentile(channel[::step, ::step], SCALE_PERCENTILES)
    if high <= low:  # sparse signal: fewer than 0.1 % of pixels above the background
        high = float(channel.max())
    if high <= low:
        return np.zeros_like(channel)
    scaled = (channel - np.float32(low)) / np.float32(high - low)
    return np.clip(scaled, 0.0, 1.0, out=scaled)
