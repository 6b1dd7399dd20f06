"""Single-cell crops for pretraining: from images (segmented or with label images), synthetic fields or arrays.

Each cell is cut with a window fitted to the cells of its image (``crops.crop_size_for``: the 95th
percentile cell extent with a margin), background outside the cell zeroed, resized to one stored size
and kept as uint8 in the stains the model will read (protein, nucleus; a missing stain is zero). Crops
of an image are cached on disk as one .npy keyed by the image's content hash and these settings, so a
second pass (another epoch, a resumed run) neither re-reads the segmentation nor re-crops.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..crops import iter_cell_crops
from ..crops import crop_size_for
from ..errors import DinolocError
from ..progress import check_cancel, report
from ..segmentation import CellTable, segment_cells
from ..stains import NUCLEUS, PROTEIN

CACHE_VERSION = 1
MIN_CELL_AREA = 30  # px: specks the segmentation keeps are not cells worth learning from


@dataclass(frozen=True)
class ImageSource:
    """An image to take cells from: file(s), which channel is which stain, optionally its label image."""

    files: str | Path | tuple
    channels: str | None = None  # e.g. "protein=1,nucleus=0"; None: what the file kind implies
    labels: str | Path | None = None
    group: str = ""  # e.g. the data folder, for the record of data used
    segmentation: object = None  # SegmentationParams for this image (cell sizes); None: the defaults
    channel_axis: int | None = None  # axis of the channels when the file does not say


def to_uint8(crops: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(crops, np.float32) * 255.0), 0, 255).astype(np.uint8)


def resize_crops(crops: np.ndarray, size: int) -> np.ndarray:
    """(B, C, S, S) float -> (B, C, size, size), antialiased."""
    import torch

    if crops.shape[-1] == size:
        return crops
    tensor = torch.from_numpy(np.ascontiguousarray(crops, np.float32))
    out = torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.numpy()


def cell_crops(image, labels: np.ndarray, stains: Sequence[str], size: int, margin: float = 1.5) -> np.ndarray:
    """(N, len(stains), size, size) uint8 crops of the cells in ``labels``, masked to each cell."""
    table = CellTable.from_labels(labels)
    keep = table.area >= MIN_CELL_AREA
    if not keep.any():
        return np.zeros((0, len(stains), size, size), np.uint8)
    table = CellTable(table.label[keep], table.centroid_y[keep], table.centroid_x[keep], table.area[keep], table.bbox[keep])
    planes = [image.channel(s) if image.channel(s) is not None else np.zeros(image.shape, np.float32) for s in stains]

    class _Stacked:  # iter_cell_crops reads only .data
        data = np.stack(planes).astype(np.float32, copy=False)

    crop = max(8, crop_size_for(table, margin=margin, multiple=8))
    batches = [to_uint8(resize_crops(batch, size)) for _, batch in iter_cell_crops(_Stacked, labels, table, crop, True, 64)]
    return np.concatenate(batches)


class PretrainCells:
    """Crops of many cells in fixed stains, gathered in batches by index (parts may be memory-mapped files)."""

    def __init__(self, parts: Sequence[np.ndarray], stains: Sequence[str], records: Sequence[dict] = (),
                 classes: Sequence[str] | None = None) -> None:
        parts = [p for p in parts if len(p)]
        if not parts:
            raise DinolocError("No cells to pretrain on: the images gave no cells. Check the stains and segmentation.")
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3 or len(stains) != next(iter(shapes))[0]:
            raise ValueError(f"crops must all be (N, {len(stains)}, S, S), got {sorted(shapes)}")
        self.parts = list(parts)
        self.stains = tuple(stains)
        self.records = list(records)
        self.classes = None if classes is None else list(classes)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.image_of = np.repeat(np.arange(len(self.parts)), [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def size(self) -> int:
        return int(self.parts[0].shape[-1])

    def batch(self, indices) -> np.ndarray:
        """(B, C, S, S) uint8 crops of the cells ``indices``."""
        indices = np.asarray(indices, np.int64)
        part = np.searchsorted(self.offsets, indices, side="right") - 1
        out = np.empty((len(indices),) + tuple(self.parts[0].shape[1:]), np.uint8)
        for p in np.unique(part):
            rows = np.nonzero(part == p)[0]
            out[rows] = self.parts[p][indices[rows] - self.offsets[p]]
        return out

    @classmethod
    def from_arrays(cls, crops, stains: Sequence[str] = (PROTEIN, NUCLEUS)) -> "PretrainCells":
        crops = np.asarray(crops)
        crops = crops if crops.dtype == np.uint8 else to_uint8(crops)
        return cls([crops], stains, [{"source": "arrays", "cells": len(crops)}])

    @classmethod
    def from_fields(cls, seeds: Sequence[int], shape=(512, 512), size: int = 96, stains: Sequence[str] = (PROTEIN, NUCLEUS),
                    classes: Sequence[str] | None = None) -> "PretrainCells":
        """Cells of synthetic fields (ground-truth labels, no segmentation); ``.classes`` holds each cell's class."""
        from ..images import make_cell_image
        from ..synthetic import make_field

        parts, records, cell_classes = [], [], []
        for seed in seeds:
            field = make_field(seed=int(seed), shape=tuple(shape), classes=classes)
            image = make_cell_image(field.image, field.stains, name=f"synthetic-{seed}")
            crops = cell_crops(image, field.labels, stains, size)
            table = CellTable.from_labels(field.labels)
            cell_classes += [field.cell_class[int(label)] for label in table.label[table.area >= MIN_CELL_AREA]]
            parts.append(crops)
            records.append({"source": image.name, "group": "synthetic", "cells": len(crops)})
        return cls(parts, stains, records, cell_classes)

    @classmethod
    def from_images(cls, sources: Sequence, cache_dir: str | Path, size: int = 96, stains: Sequence[str] = (PROTEIN, NUCLEUS),
                    segment: Callable = segment_cells, progress=None, cancel=None,
                    say: Callable[[str], None] = lambda _: None) -> "PretrainCells":
        """Cells of ``sources`` (ImageSource or CellImage), one image at a time, through the crop cache.

        An image that cannot be read or has no cells is skipped with a message (``say``).
        """
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        parts, records = [], []
        for done, source in enumerate(sources):
            check_cancel(cancel)
            try:
                crops, record = _cached_crops(source, cache, size, tuple(stains), segment)
            except DinolocError as exc:
                say(f"skipped {_source_name(source)}: {exc}")
                continue
            if not len(crops):
                say(f"skipped {record['source']}: no cells of at least {MIN_CELL_AREA} pixels found")
                continue
            parts.append(crops)
            records.append(record)
            report(progress, done + 1, len(sources), f"Cells of {record['source']}: {len(crops)}")
        return cls(parts, stains, records)

    @classmethod
    def concat(cls, parts: Sequence["PretrainCells"]) -> "PretrainCells":
        """One set of the cells of several (same stains and stored size)."""
        parts = [p for p in parts if len(p)]
        if len({p.stains for p in parts}) > 1:
            raise ValueError("cells to join must have the same stains")
        return cls([a for p in parts for a in p.parts], parts[0].stains, [r for p in parts for r in p.records])

    def summary(self) -> dict:
        groups: dict[str, dict] = {}
        for record in self.records:
            group = groups.setdefault(record.get("group", ""), {"images": 0, "cells": 0})
            group["images"] += 1
            group["cells"] += int(record["cells"])
        return {"cells": len(self), "images": len(self.records), "groups": groups}


def _source_name(source) -> str:
    files = getattr(source, "files", None)
    if files is None:
        return str(getattr(source, "name", source))
    return Path(files[0] if isinstance(files, (tuple, list)) else files).name


def _cached_crops(source, cache: Path, size: int, stains: tuple, segment: Callable) -> tuple[np.ndarray, dict]:
    from ..images import CellImage, load_cell_image

    params = getattr(source, "segmentation", None)
    if isinstance(source, CellImage):
        image, labels_file, group = source, None, ""
    else:
        files = list(source.files) if isinstance(source.files, (tuple, list)) else source.files
        image = load_cell_image(files, source.channels, channel_axis=getattr(source, "channel_axis", None))
        labels_file, group = source.labels, source.group
    labels = _read_labels(labels_file, image.shape) if labels_file is not None else None
    key = {"image": image.content_hash, "stains": stains, "size": size, "version": CACHE_VERSION,
           "labels": None if labels is None else hashlib.sha256(labels.tobytes()).hexdigest(), "params": repr(params)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = cache / f"{digest}.npy"
    if path.is_file():
        crops = np.load(path, mmap_mode="r")
    else:
        if labels is None:
            labels = segment(image) if params is None else segment(image, params)
        crops = cell_crops(image, labels, stains, size)
        with open(path.with_suffix(".tmp"), "wb") as handle:  # np.save + rename: never a half-written cache entry
            np.save(handle, crops)
        path.with_suffix(".tmp").replace(path)
        crops = np.load(path, mmap_mode="r")
    return crops, {"source": image.name, "group": group, "cells": int(len(crops)), "cache": path.name}


def _read_labels(path, shape) -> np.ndarray:
    from ..images import read_image
    from ..segmentation import prepare_labels

    raw = read_image(path)
    return prepare_labels(np.asarray(raw.array[0]), shape)
