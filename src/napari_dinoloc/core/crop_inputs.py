"""Single-cell crops as input: a folder of crop images (one file per cell) or a stack file (N, C, H, W).

Each crop becomes an image of its own holding one cell (label 1): the whole crop, or its foreground
(Otsu on the sum of the channels, largest blob). Classes come from sub-folder names (as torchvision's
ImageFolder) or from a CSV with columns ``file,class``; they are written as an annotation CSV
(``image,label,class``) so that training, evaluation and fine-tuning read them as any annotations.
The image name of a crop is its file relative to the folder (``golgi/cell_003.png``), or
``stack.npy#12`` for the 13th crop of a stack: the per-cell CSV names each crop's file.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import DinolocError

CROP_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")
STACK_SUFFIXES = (".tif", ".tiff", ".npy")
MASKS = ("whole", "foreground")


@dataclass(frozen=True)
class CropSource:
    """One single-cell crop: where it came from and its class, if known. Pixels are read when needed."""

    name: str                   # the crop's file relative to its folder, or "<stack>#<index>"
    path: Path                  # the file (a crop file, or the stack file)
    index: Optional[int] = None  # position in a stack file
    cls: Optional[str] = None


def is_crop_stack(path: Path) -> bool:
    return Path(path).is_file() and Path(path).suffix.lower() in STACK_SUFFIXES


def list_crops(path, classes_csv=None) -> list[CropSource]:
    """The crops of a folder (classes from sub-folders) or of a stack file; ``classes_csv``: file,class rows."""
    path = Path(path)
    if not path.exists():
        raise DinolocError(f"No crops at {path}: give a folder of crop images or a stack file (.tif, .npy).")
    crops = _stack_crops(path) if path.is_file() else _folder_crops(path)
    if classes_csv is not None:
        crops = _with_csv_classes(crops, Path(classes_csv))
    return crops


def _folder_crops(folder: Path) -> list[CropSource]:
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subfolders:
        files = _crop_files(folder)
        if not files:
            raise DinolocError(f"{folder} holds no crop images ({', '.join(CROP_SUFFIXES)}): give a folder of crops.")
        return [CropSource(f.name, f) for f in files]
    crops = []
    for sub in subfolders:
        files = _crop_files(sub)
        if not files:
            raise DinolocError(f"The class folder {sub.name!r} in {folder} holds no crop images: add crops of that "
                               "class or remove the folder.")
        crops += [CropSource(f"{sub.name}/{f.name}", f, cls=sub.name) for f in files]
    return crops


def _crop_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in CROP_SUFFIXES)


def _stack_crops(path: Path) -> list[CropSource]:
    shape = _stack_shape(path)
    if len(shape) != 4:
        raise DinolocError(f"{path.name} has shape {shape}; a stack of crops must be (N, C, H, W): one crop per row.")
    return [CropSource(f"{path.name}#{i}", path, index=i) for i in range(shape[0])]


def _stack_shape(path: Path) -> tuple:
    try:
        if path.suffix.lower() == ".npy":
            return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return tuple(tif.series[0].shape)
    except (OSError, ValueError, Exception) as exc:  # any reader error: the file cannot be used
        raise DinolocError(f"Cannot read the crop stack {path.name} ({exc}): give an (N, C, H, W) .npy or .tif file.") from exc


def _with_csv_classes(crops: list[CropSource], path: Path) -> list[CropSource]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise DinolocError(f"Cannot read the crop classes {path}: {exc}.") from exc
    if not rows or not {"file", "class"} <= set(rows[0]):
        raise DinolocError(f"{path.name} needs the columns file,class (one row per crop, file as the crop's name).")
    classes = {row["file"].strip(): row["class"].strip() for row in rows}
    return [CropSource(c.name, c.path, c.index, classes.get(c.name, classes.get(Path(c.name).name, c.cls)))
            for c in crops]


def read_crop(crop: CropSource) -> np.ndarray:
    """The crop's pixels (C, H, W) as stored."""
    try:
        if crop.index is not None:
            data = np.load(crop.path, mmap_mode="r", allow_pickle=False)[crop.index] if crop.path.suffix.lower() == ".npy" \
                else _tiff_plane(crop.path, crop.index)
            return np.asarray(data)
        if crop.path.suffix.lower() == ".npy":
            data = np.load(crop.path, allow_pickle=False)
            return data[None] if data.ndim == 2 else data
        from .images import read_image

        return read_image(crop.path).array
    except DinolocError as exc:
        raise DinolocError(f"Cannot read the crop {crop.name}: {exc}") from exc
    except Exception as exc:  # a broken file of any kind: one clear line naming it
        raise DinolocError(f"Cannot read the crop {crop.name} ({type(exc).__name__}: {exc}): replace or remove the file.") from exc


def _tiff_plane(path: Path, index: int) -> np.ndarray:
    import tifffile

    return tifffile.imread(path)[index]


def crop_image(crop: CropSource, stains):
    """The crop as a CellImage named after its file."""
    from .images import make_cell_image

    return make_cell_image(read_crop(crop), stains, crop.name)


def crop_labels(image, mask: str = "whole") -> np.ndarray:
    """One cell (label 1): the whole crop, or its foreground (Otsu on the summed channels, largest blob)."""
    if mask not in MASKS:
        raise DinolocError(f"Unknown crop mask {mask!r}: choose one of {', '.join(MASKS)}.")
    if mask == "whole":
        return np.ones(image.shape, np.int32)
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    total = image.data.sum(axis=0)
    if total.max() <= total.min():
        return np.ones(image.shape, np.int32)
    blobs, count = ndi.label(ndi.binary_fill_holes(total > threshold_otsu(total)))
    if count == 0:
        return np.ones(image.shape, np.int32)
    largest = 1 + int(np.argmax(np.bincount(blobs.ravel())[1:]))
    return (blobs == largest).astype(np.int32)


def check_channel_counts(crops: Sequence[CropSource]) -> None:
    """Every crop has the same number of channels; the first that differs is named."""
    first = None
    for crop in crops:
        channels = _channels(read_crop(crop))
        if first is None:
            first = (crop.name, channels)
        elif channels != first[1]:
            raise DinolocError(f"The crops have different channel counts: {first[0]} has {first[1]}, {crop.name} has "
                               f"{channels}. Give crops with the same channels (stains) in the same order.")


def write_crop_classes(crops: Sequence[CropSource], path) -> Optional[Path]:
    """The crops' classes as an annotation CSV (image,label,class); None when no crop has a class."""
    from .files import atomic_write

    rows = [(c.name, 1, c.cls) for c in crops if c.cls]
    if not rows:
        return None
    with atomic_write(Path(path), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "class"])
        writer.writerows(rows)
    return Path(path)


#: Empty pixels between crops in a mosaic, so that no crop's window reaches into its neighbour's cell.
MOSAIC_GAP = 8


@dataclass
class CropMosaic:
    """Crops laid out on a grid as one image (for the viewer): pixels, one label per crop, names, classes."""

    data: np.ndarray            # (C, Y, X) float32, each crop scaled to [0, 1] on its own
    labels: np.ndarray          # (Y, X) int32: crop k is label k + 1 (whole crop or its foreground)
    names: list[str]            # crop file of each label, in label order
    classes: dict[int, str]     # label -> class, for crops with a class


def crop_mosaic(path, mask: str = "whole", classes_csv=None) -> CropMosaic:
    """The crops of a folder or stack as one mosaic image, row by row in file order."""
    from .images import make_cell_image

    crops = list_crops(path, classes_csv)
    check_channel_counts(crops)
    images = [make_cell_image(read_crop(c), ["other"] * _channels(read_crop(c)), c.name) for c in crops]
    side = max(max(im.shape) for im in images) + MOSAIC_GAP
    columns = int(np.ceil(np.sqrt(len(images))))
    rows = int(np.ceil(len(images) / columns))
    data = np.zeros((images[0].n_channels, rows * side, columns * side), np.float32)
    labels = np.zeros(data.shape[1:], np.int32)
    for k, image in enumerate(images):
        top, left = (k // columns) * side, (k % columns) * side
        height, width = image.shape
        data[:, top:top + height, left:left + width] = image.data
        labels[top:top + height, left:left + width] = crop_labels(image, mask) * (k + 1)
    classes = {k + 1: c.cls for k, c in enumerate(crops) if c.cls}
    return CropMosaic(data, labels, [c.name for c in crops], classes)


def _channels(data: np.ndarray) -> int:
    return data.shape[0] if data.ndim == 3 else 1
