"""Reading image files into a RawImage: TIFF / OME-TIFF / ImageJ TIFF (tifffile, axes from the file's
metadata when it has them), PNG / JPEG and other formats imageio reads, RGB composites, and one file
per stain; the channel axis found from metadata, the shape, or the user."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DinolocError
from ..stains import HPA_FILE_COLOURS, RGB_SLOTS, STAINS
from ._cellpainting import cell_painting_id, cell_painting_siblings, name_channels
from ._hpa import hpa_colour, hpa_id, hpa_siblings
from ._image import CellImage, RawImage, check_dtype, make_cell_image
from ._size import MAX_SIDE, check_fits_in_memory

#: More channels than this on an axis and it is taken for a spatial or Z axis, not channels.
MAX_CHANNELS = 8
TIFF_SUFFIXES = (".tif", ".tiff")


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
        siblings = cell_painting_siblings(path) if channel_axis is None else [path]
        if len(siblings) > 1:
            raw = read_channel_files(siblings)
            note = f"Read the {len(siblings)} Cell Painting channel files of site {raw.name}."
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
    from ._lazy import is_ome_zarr, is_vendor_file, read_ome_zarr, read_vendor_file

    if is_ome_zarr(path) and channel_axis is None:  # a folder, read lazily (level 0 only)
        if not path.exists():
            raise DinolocError(f"File not found: {path}. Check the path and the file name.")
        return read_ome_zarr(path, image_name(path))
    check_file_exists(path)
    if is_vendor_file(path):
        return read_vendor_file(path, image_name(path))
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
    else:
        default, painting_notes = name_channels(paths, channels)
        notes.extend(painting_notes)
    ids = {hpa_id(p) or cell_painting_id(p) for p in paths}
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
            check_fits_in_memory(series.shape, series.dtype, series.axes, path)
            array = series.asarray()
            axes = series.axes
            page = series.pages[0] if series.pages else tif.pages[0]
            photometric = int(getattr(page, "photometric", 0) or 0)
            contiguous = int(getattr(page, "planarconfig", 1) or 1) == 1
    except DinolocError:
        raise
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

    _check_declared_size(path)
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


def _check_declared_size(path: Path) -> None:
    """Refuse an image too large for memory from its header (PNG, JPEG, ... as PIL reads them lazily)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height, bands = image.size[0], image.size[1], len(image.getbands())
            itemsize = 2 if image.mode.startswith("I;16") else 4 if image.mode in ("I", "F") else 1
    except Image.DecompressionBombError as exc:  # PIL's own limit, below ours: same advice
        raise DinolocError(f"{path.name} is too large ({str(exc).split('(')[1].split(')')[0]}): napari-dinoloc reads "
                           f"fields of view up to {MAX_SIDE} × {MAX_SIDE} pixels. Crop it into smaller fields first.") from None
    except (UnidentifiedImageError, OSError, ValueError):
        return  # not a format PIL knows: imageio reads (or refuses) it
    check_fits_in_memory((height, width, bands), np.dtype(f"u{itemsize}"), "YXS", path)


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


def image_name(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


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
