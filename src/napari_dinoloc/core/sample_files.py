"""Synthetic samples as files, for the command line: images, ground-truth cells, cell classes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .errors import DinolocError
from .files import atomic_write


def write_label_image(path: str | Path, labels: np.ndarray) -> Path:
    return write_image(path, labels.astype(np.int32), axes="YX")


def write_image(path: str | Path, image: np.ndarray, axes: str = "CYX") -> Path:
    import io

    import tifffile

    buffer = io.BytesIO()  # tifffile wants a named file; write in memory, then atomically to disk
    tifffile.imwrite(buffer, image, metadata={"axes": axes}, photometric="minisblack", compression="zlib")
    with atomic_write(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return Path(path)


def write_samples(outdir: str | Path, count: int = 2, size: int = 512, seed: int = 0) -> list[Path]:
    """``field_NNN.tif`` (channel 0 nucleus, 1 protein), ``field_NNN_labels.tif`` and
    ``cells.csv`` (image, label, class) for every field, with seeds seed, seed+1, ..."""
    from .synthetic import make_field

    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise DinolocError(f"{outdir} exists and is not a folder: choose another output folder.")
    outdir.mkdir(parents=True, exist_ok=True)
    written, rows = [], []
    for index in range(count):
        field = make_field(seed=seed + index, shape=(size, size))
        name = f"field_{index:03d}"
        written.append(write_image(outdir / f"{name}.tif", field.image))
        written.append(write_label_image(outdir / f"{name}_labels.tif", field.labels))
        rows += [{"image": name, "label": label, "class": cls} for label, cls in sorted(field.cell_class.items())]
    written.append(_write_cell_classes(outdir / "cells.csv", rows))
    return written


def _write_cell_classes(path: Path, rows: list[dict]) -> Path:
    with atomic_write(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "label", "class"])
        writer.writeheader()
        writer.writerows(rows)
    return path
