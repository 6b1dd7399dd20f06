"""Images read lazily through dask: OME-Zarr (ome-zarr / zarr) and vendor formats through bioio.

Only the full-resolution level is read, and only after its declared size was checked against memory;
Z and T are max-projected on the lazy array, so a stack is never held whole in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DinolocError
from ..stains import NUCLEUS, STAINS
from ._image import RawImage
from ._size import check_fits_in_memory

#: Vendor formats read through bioio, and the plugin package that reads each.
BIOIO_PLUGINS = {
    ".czi": "bioio-czi", ".nd2": "bioio-nd2", ".lif": "bioio-lif", ".oib": "bioio-bioformats",
    ".oir": "bioio-bioformats", ".vsi": "bioio-bioformats", ".ims": "bioio-imaris", ".dv": "bioio-dv",
    ".sldy": "bioio-sldy",
}
#: Channel names in microscopes' metadata that mean a nucleus stain.
NUCLEUS_NAMES = {"dapi", "hoechst", "hoechst 33342", "nucleus", "nuclei", "dna"}


def is_ome_zarr(path: Path) -> bool:
    return path.suffix.lower() == ".zarr" or (path.is_dir() and any(
        (path / marker).is_file() for marker in ("zarr.json", ".zattrs", ".zgroup")))


def is_vendor_file(path: Path) -> bool:
    return path.suffix.lower() in BIOIO_PLUGINS


def read_ome_zarr(path: Path, name: str) -> RawImage:
    """Level 0 of the first image of an OME-Zarr folder (local path or URL ome-zarr understands)."""
    return _lazy_to_raw(*ome_zarr_level0(path), name, path)


def ome_zarr_level0(path: Path):
    """(lazy dask array of level 0, its axes letters, channel names or None); no pixel read."""
    try:
        from ome_zarr.io import parse_url
        from ome_zarr.reader import Reader
    except ImportError:
        raise DinolocError(f"Reading {path.name} needs ome-zarr: pip install ome-zarr.") from None
    try:
        location = parse_url(str(path))
        nodes = list(Reader(location)()) if location is not None else []
    except Exception as exc:  # broken metadata comes in many kinds of errors
        raise DinolocError(f"Cannot read {path.name} as OME-Zarr ({type(exc).__name__}: {exc}).") from None
    nodes = [n for n in nodes if n.data]
    if not nodes:
        raise DinolocError(f"{path.name} holds no OME-Zarr image (no multiscales). Give the image's folder, "
                           "e.g. plate.zarr/A/1/0.")
    node = nodes[0]
    axes = "".join(a["name"] if isinstance(a, dict) else str(a) for a in node.metadata.get("axes", ())).upper()
    data = node.data[0]  # level 0: full resolution; other levels are never read
    if len(axes) != data.ndim:
        axes = {2: "YX", 3: "CYX", 4: "CZYX", 5: "TCZYX"}.get(data.ndim, "")
    return data, axes, node.metadata.get("channel_names")


def read_vendor_file(path: Path, name: str) -> RawImage:
    """A CZI / ND2 / LIF ... file through bioio and its plugin for the format."""
    return _lazy_to_raw(*vendor_data(path), name, path)


def vendor_data(path: Path):
    """(lazy dask array, "TCZYX", channel names) of a vendor file; no pixel read."""
    plugin = BIOIO_PLUGINS[path.suffix.lower()]
    try:
        from bioio import BioImage
    except ImportError:
        raise DinolocError(f"Reading {path.name} needs bioio and its plugin: pip install bioio {plugin}.") from None
    try:
        image = BioImage(path)
    except Exception as exc:
        if type(exc).__name__ in ("UnsupportedFileFormatError", "ValueError", "ImportError"):
            raise DinolocError(f"Reading {path.name} needs the bioio plugin for {path.suffix} files: "
                               f"pip install {plugin}.") from None
        raise DinolocError(f"Cannot read {path.name} ({type(exc).__name__}: {exc}).") from None
    return image.dask_data, "TCZYX", list(image.channel_names or ())


def check_lazy_axes(axes: str, path: Path) -> None:
    if not axes or set(axes) - set("TCZYX") or "Y" not in axes or "X" not in axes:
        raise DinolocError(f"{path.name} has axes {axes or '?'}; napari-dinoloc reads images with Y and X axes "
                           "and optional C, Z, T.")


def _lazy_to_raw(data, axes: str, channel_names, name: str, path: Path) -> RawImage:
    check_lazy_axes(axes, path)
    check_fits_in_memory(data.shape, data.dtype, axes, path)
    notes = []
    for letter in "TZ":
        if letter in axes and data.shape[axes.index(letter)] > 1:
            notes.append(f"{letter} axis ({data.shape[axes.index(letter)]} planes) reduced by maximum projection.")
    project = tuple(i for i, a in enumerate(axes) if a in "TZ")
    if project:
        data = data.max(axis=project)
        axes = "".join(a for a in axes if a not in "TZ")
    if "C" not in axes:
        data, axes = data[None], "C" + axes
    order = [axes.index(a) for a in "CYX"]
    array = np.ascontiguousarray(np.asarray(data.transpose(order)))
    return RawImage(array, name, tuple(notes), _stains_from_names(channel_names, array.shape[0]))


def _stains_from_names(names, count: int):
    """The stains when every channel name is one (DAPI and Hoechst mean nucleus); else None: --channels says."""
    if not names or len(names) != count:
        return None
    stains = [NUCLEUS if str(n).strip().lower() in NUCLEUS_NAMES else str(n).strip().lower() for n in names]
    if all(s in STAINS for s in stains) and len(set(stains)) == len(stains):
        return tuple(stains)
    return None
