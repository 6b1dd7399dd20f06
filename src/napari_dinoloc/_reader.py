"""napari reader: Human Protein Atlas per-stain files, and folders or stacks of single-cell crops.

HPA files (``<id>_red.png``, ``_green``, ``_blue``, ``_yellow``, or a folder holding them) open as
one layer per stain, named and coloured by stain and blended additively: the field looks as in the
Atlas, and the dock guesses each layer's stain from its name. A folder of single-cell crops (class
sub-folders, as ``dinoloc`` reads them) or an (N, C, H, W) ``.npy`` stack opens as one image stack
per channel, a crop per plane, with each crop's file and class in the layers' metadata.

``get_reader`` returns None for anything else, so napari tries its other readers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .core.errors import DinolocError
from .core.stains import ER, HPA_FILE_COLOURS, MICROTUBULES, NUCLEUS, PROTEIN, conventional_stains

#: Layer colour of each stain: HPA's colours, microtubules in magenta (red and green look alike to many).
STAIN_COLOURS = {MICROTUBULES: "magenta", PROTEIN: "green", NUCLEUS: "blue", ER: "yellow"}
#: Stain names as layer names (the dock's stain guess reads them).
STAIN_TITLES = {ER: "ER"}
#: A folder is taken for crops only when its first crop is at most this many pixels a side.
MAX_CROP_SIDE = 512
#: Crops of a folder are read into memory: refuse more than this many bytes (use the dock instead).
MAX_CROP_BYTES = 2 * 1024**3


def get_reader(path: "str | Sequence[str]") -> Optional[Callable]:
    """The npe2 reader command: a function reading ``path``, or None when it is not ours."""
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    try:
        return _reader_for(paths)
    except (OSError, ValueError, DinolocError):  # unreadable: not ours to open, napari tries others
        return None


def _reader_for(paths: list[Path]) -> Optional[Callable]:
    from .core.images import find_hpa_groups, hpa_colour

    if not paths:
        return None
    if all(p.is_file() and hpa_colour(p) for p in paths):
        return lambda _path: read_hpa_files(paths)
    if len(paths) != 1:
        return None
    path = paths[0]
    if path.is_dir() and find_hpa_groups([path]):
        return lambda _path: read_hpa_files([path])
    if is_crop_source(path):
        return lambda _path: read_crops(path)
    return None


# ---- HPA per-stain files -------------------------------------------------------------------------
def read_hpa_files(paths: Sequence[Path]) -> list[tuple]:
    """One layer per stain file of ``paths`` (files or folders), grouped by HPA id."""
    from .core.images import find_hpa_groups

    layers = []
    for group in find_hpa_groups(paths):
        layers += [hpa_layer(file) for file in group]
    return layers


def hpa_layer(path: Path) -> tuple:
    from .core.images import hpa_colour, hpa_id, read_channel_files

    stain = HPA_FILE_COLOURS[hpa_colour(path)]
    plane = read_channel_files([path]).array[0]  # a stain saved as a colour file keeps its colour's plane
    image_id = hpa_id(path)
    return (plane, {
        "name": f"{image_id} {STAIN_TITLES.get(stain, stain)}",
        "colormap": STAIN_COLOURS[stain],
        "blending": "additive",
        "metadata": {"dinoloc_image_name": image_id, "dinoloc_stain": stain, "source_file": str(path)},
    }, "image")


# ---- single-cell crops ---------------------------------------------------------------------------
def is_crop_source(path: Path) -> bool:
    """A 4-D ``.npy`` stack, or a folder whose crops (flat or in class sub-folders) are crop-sized."""
    from .core.crop_inputs import list_crops, read_crop

    if path.is_file():
        return path.suffix.lower() == ".npy" and np.load(path, mmap_mode="r", allow_pickle=False).ndim == 4
    if not path.is_dir():
        return False
    crops = list_crops(path)
    return max(_channels_first(read_crop(crops[0]), crops[0].name).shape[1:]) <= MAX_CROP_SIDE


def read_crops(path: Path) -> list[tuple]:
    """One image stack per channel (crop k is plane k), each crop centred on an empty canvas."""
    from .core.crop_inputs import list_crops, read_crop

    crops = list_crops(path)
    if path.is_file():  # (N, C, H, W): kept on disk, napari reads the planes it shows
        stack = np.load(path, mmap_mode="r", allow_pickle=False)
        planes = [stack[:, c] for c in range(stack.shape[1])]
    else:
        planes = _crop_planes([_channels_first(read_crop(c), c.name) for c in crops], path)
    names, classes = [c.name for c in crops], [c.cls or "" for c in crops]
    metadata = {"dinoloc_crop_stack": True, "dinoloc_crop_names": names, "dinoloc_crop_classes": classes,
                "dinoloc_class_names": sorted({c for c in classes if c})}
    stains = conventional_stains(len(planes))
    return [(plane, {"name": f"crops {STAIN_TITLES.get(stain, stain)}", "colormap": STAIN_COLOURS.get(stain, "gray"),
                     "blending": "additive", "metadata": dict(metadata)}, "image")
            for stain, plane in zip(stains, planes)]


def _crop_planes(crops: list[np.ndarray], path: Path) -> list[np.ndarray]:
    counts = {c.shape[0] for c in crops}
    if len(counts) > 1:
        raise DinolocError(f"The crops in {path.name} have different channel counts ({sorted(counts)}): "
                           "give crops with the same channels (stains) in the same order.")
    height, width = (max(c.shape[i] for c in crops) for i in (1, 2))
    dtype = np.result_type(*(c.dtype for c in crops))
    size = len(crops) * crops[0].shape[0] * height * width * dtype.itemsize
    if size > MAX_CROP_BYTES:
        raise DinolocError(f"The {len(crops)} crops in {path.name} need {size / 1024**3:.1f} GiB: open them with the "
                           "dock ('Open a crop folder…', shown as a mosaic) or as an (N, C, H, W) .npy stack, which stays on disk.")
    stack = np.zeros((crops[0].shape[0], len(crops), height, width), dtype)
    for k, crop in enumerate(crops):
        top, left = (height - crop.shape[1]) // 2, (width - crop.shape[2]) // 2
        stack[:, k, top:top + crop.shape[1], left:left + crop.shape[2]] = crop
    return list(stack)


def _channels_first(data: np.ndarray, name: str) -> np.ndarray:
    """(C, H, W) from a crop file's pixels: (H, W), (C, H, W) or (H, W, C) as ``.npy`` crops are saved."""
    from .core.images import to_channels_first

    return np.asarray(data)[None] if np.ndim(data) == 2 else to_channels_first(np.asarray(data), None, None, name)[0]
