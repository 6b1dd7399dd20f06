"""An image read one region at a time (a tile of a very large field), never whole when the format allows.

TIFF files are read through tifffile's zarr view (only the strips or tiles a region touches are read),
OME-Zarr and vendor formats through their lazy dask arrays, per-stain TIFF files each the same way.
Other files (PNG, JPEG, RGB composites, HPA colour files) cannot be read in parts: they are read whole,
once, and cut. The channels come out as ``read_image`` gives them (C, Y, X, extra axes max-projected).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import DinolocError
from ._readers import (
    MAX_CHANNELS, TIFF_SUFFIXES, check_file_exists, image_name, project_and_order, read_image, unreadable,
)

#: Rows read at a time when a whole channel must be scanned (its brightest pixel).
SCAN_ROWS = 1024


@dataclass
class LazyImage:
    """Pixels as stored, read by region: ``array`` (numpy, zarr or dask) with one letter per axis in
    ``axes`` (C or S: channels; Y, X; any other: max-projected)."""

    array: object
    axes: str
    name: str
    notes: tuple = ()
    default_stains: Optional[tuple] = None
    lazy: bool = True  # False: the file was read whole (its format cannot be read in parts)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.array.shape[self.axes.index("Y")]), int(self.array.shape[self.axes.index("X")])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def n_channels(self) -> int:
        return math.prod(int(n) for n, a in zip(self.array.shape, self.axes) if a in "CS")

    def region(self, top: int, bottom: int, left: int, right: int) -> np.ndarray:
        """(C, bottom - top, right - left) pixels as stored."""
        return self._read(slice(top, bottom), slice(left, right))

    def sample(self, rows: slice, cols: slice) -> np.ndarray:
        """(C, y, x) pixels at a stride over the whole plane (``images.sample_slices``)."""
        return self._read(rows, cols)

    def channel_max(self, channel: int) -> float:
        """The brightest pixel of one channel, read a band of rows at a time."""
        height, width = self.shape
        return max(float(self.region(top, min(top + SCAN_ROWS, height), 0, width)[channel].max())
                   for top in range(0, height, SCAN_ROWS))

    def _read(self, rows: slice, cols: slice) -> np.ndarray:
        index = tuple(rows if a == "Y" else cols if a == "X" else slice(None) for a in self.axes)
        block = self.array[index]
        block = np.asarray(block.compute() if hasattr(block, "compute") else block)
        channels = [i for i, a in enumerate(self.axes) if a in "CS"]
        if not channels:
            block, channels, axes = block[None], [0], "C" + self.axes
        else:
            axes = self.axes
        cyx, _ = project_and_order(block, channels, axes.index("Y"), axes.index("X"), axes)
        return cyx


class _ChannelFiles:
    """Per-stain files as one (C, Y, X) array-like: a region reads that region of each file."""

    def __init__(self, images: Sequence[LazyImage]):
        self.images = list(images)
        self.dtype = np.result_type(*(i.dtype for i in self.images))
        self.shape = (len(self.images), *self.images[0].shape)

    def __getitem__(self, index):
        _, rows, cols = index
        return np.stack([i._read(rows, cols)[0].astype(self.dtype, copy=False) for i in self.images])


def open_lazy(source, channel_axis: Optional[int] = None) -> LazyImage:
    """``source`` (a file, or a list of per-stain files) ready to be read by region; no pixel is read
    for TIFF, OME-Zarr and vendor files."""
    from ._cellpainting import cell_painting_siblings
    from ._hpa import hpa_siblings

    if isinstance(source, (str, Path)):
        path = Path(source)
        grouped = len(hpa_siblings(path)) > 1 or (channel_axis is None and len(cell_painting_siblings(path)) > 1)
        return _whole(path, channel_axis) if grouped else _open_file(path, channel_axis)  # read_image groups them
    paths = [Path(p) for p in source]
    if len(paths) == 1:
        return _open_file(paths[0], channel_axis)
    if channel_axis is None and all(p.suffix.lower() in TIFF_SUFFIXES for p in paths):
        files = [_open_file(p, None) for p in paths]
        shapes = {f.shape for f in files}
        if all(f.lazy and f.n_channels == 1 for f in files) and len(shapes) == 1:
            notes = tuple(dict.fromkeys(n for f in files for n in f.notes))
            return LazyImage(_ChannelFiles(files), "CYX", _group_name(paths), notes, None)
    return _whole(paths, channel_axis)


def declared_shape(source, channel_axis: Optional[int] = None) -> tuple[int, int]:
    """The (Y, X) size of an image from its header: TIFF through tifffile, OME-Zarr and vendor files opened
    lazily, others (PNG, JPEG, ...) through PIL's header; nothing is decoded."""
    first = Path(source[0] if isinstance(source, (list, tuple)) else source)
    from ._lazy import is_ome_zarr, is_vendor_file

    if first.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        check_file_exists(first)
        try:
            with tifffile.TiffFile(first) as tif:
                shape, axes = tuple(tif.series[0].shape), tif.series[0].axes
        except Exception as exc:  # tifffile raises many kinds of errors on broken files
            raise unreadable(first, exc) from exc
        letters = layout_letters(shape, axes, channel_axis, image_name(first))
        return int(shape[letters.index("Y")]), int(shape[letters.index("X")])
    if is_ome_zarr(first) or is_vendor_file(first):
        return _open_file(first, channel_axis).shape
    from PIL import Image

    try:
        with Image.open(first) as image:
            return int(image.size[1]), int(image.size[0])
    except Exception as exc:  # PIL refuses in many ways
        raise unreadable(first, exc) from exc


def _group_name(paths: Sequence[Path]) -> str:
    """As ``read_channel_files`` names a group: its HPA or Cell Painting id, else the first file's name."""
    from ._cellpainting import cell_painting_id
    from ._hpa import hpa_id

    ids = {hpa_id(p) or cell_painting_id(p) for p in paths}
    return ids.pop() if len(ids) == 1 and None not in ids else image_name(paths[0])


def _whole(source, channel_axis) -> LazyImage:
    raw = read_image(source, channel_axis)
    return LazyImage(raw.array, "CYX", raw.name, raw.notes, raw.default_stains, lazy=False)


def _open_file(path: Path, channel_axis: Optional[int]) -> LazyImage:
    from ._lazy import (
        _stains_from_names, check_lazy_axes, is_ome_zarr, is_vendor_file, ome_zarr_level0, vendor_data,
    )

    if is_ome_zarr(path) and channel_axis is None:
        if not path.exists():
            raise DinolocError(f"File not found: {path}. Check the path and the file name.")
        data, axes, names = ome_zarr_level0(path)
    elif is_vendor_file(path):
        check_file_exists(path)
        data, axes, names = vendor_data(path)
    elif path.suffix.lower() in TIFF_SUFFIXES:
        check_file_exists(path)
        opened = _tiff_view(path, channel_axis)
        if opened is None:  # a colour composite: read_image decides what its channels are
            return _whole(path, channel_axis)
        data, axes, names = opened
    else:
        return _whole(path, channel_axis)
    check_lazy_axes(axes.replace("S", "C"), path)
    channels = math.prod(int(n) for n, a in zip(data.shape, axes) if a in "CS")
    notes = tuple(f"{a} axis ({data.shape[i]} planes) reduced by maximum projection."
                  for i, a in enumerate(axes) if a not in "CSYX" and data.shape[i] > 1)
    return LazyImage(data, axes, image_name(path), notes, _stains_from_names(names, channels))


def _tiff_view(path: Path, channel_axis: Optional[int]):
    """(zarr view of the first series, axes letters, None), or None for an 8-bit RGB composite."""
    import tifffile
    import zarr

    try:
        tif = tifffile.TiffFile(path)  # stays open while the view is read (closed with the view)
        series = tif.series[0]
        page = series.pages[0] if series.pages else tif.pages[0]
        rgb = (int(getattr(page, "photometric", 0) or 0) == 2 and series.dtype == np.uint8
               and series.axes.endswith("S") and series.shape[-1] in (3, 4))
        if rgb and channel_axis is None:
            tif.close()
            return None
        view = zarr.open(series.aszarr(level=0), mode="r")
    except Exception as exc:  # tifffile raises many kinds of errors on broken files
        raise unreadable(path, exc) from exc
    return view, layout_letters(tuple(series.shape), series.axes, channel_axis, image_name(path)), None


def layout_letters(shape: tuple, axes: Optional[str], channel_axis: Optional[int], name: str) -> str:
    """One letter per axis, decided as ``read_image`` decides the layout (from the whole shape, never a
    region's: a small edge tile must not look like a channel axis)."""
    ndim = len(shape)
    if channel_axis is not None:
        if not -ndim <= channel_axis < ndim:
            raise DinolocError(f"Channel axis {channel_axis} does not exist: {name} has shape {shape} "
                               f"(axes 0 to {ndim - 1}, or -1 for the last).")
        c = channel_axis % ndim
        others = [i for i in range(ndim) if i != c]
        if len(others) < 2:
            raise DinolocError(f"{name} has shape {shape}: after the channel axis no Y and X axes are left.")
        return "".join("C" if i == c else "Y" if i == others[-2] else "X" if i == others[-1] else "Z" for i in range(ndim))
    if axes is not None and len(axes) == ndim and any(a in axes for a in "CSZT"):
        if "Y" not in axes or "X" not in axes or set(axes) - set("CSZTYX"):
            raise _unknown(name, shape, f" (axes {axes!r})")
        return axes
    if ndim == 2:
        return "YX"
    if ndim == 3:
        candidates = [(size, pos) for size, pos in ((shape[0], 0), (shape[2], 2)) if size <= MAX_CHANNELS]
        if candidates:
            return "CYX" if min(candidates)[1] == 0 else "YXC"
    raise _unknown(name, shape, "")


def _unknown(name: str, shape: tuple, axes: str) -> DinolocError:
    return DinolocError(f"Cannot tell which axis of {name} holds the channels: found shape {shape}{axes}. Give the "
                        "channel axis as an index into that shape (--channel-axis); the other non-Y/X axes are "
                        "reduced by maximum projection.")
