"""Per-image summary of predictions: how many cells of each class, and their fractions.

Made from the per-cell rows (``core.table``), so the dock, ``dinoloc predict`` and a folder run give
the same numbers; written with ``atomic_write`` beside the per-cell CSV (``<name>_per_image.csv``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .files import atomic_write

SUFFIX = "_per_image.csv"


def summary_columns(class_names: Sequence[str]) -> list[str]:
    return ["image", "cells", "mean_confidence", *(f"n_{name}" for name in class_names),
            *(f"fraction_{name}" for name in class_names)]


def summary_path_for(cells_csv: str | Path) -> Path:
    """Where the per-image summary of a per-cell CSV goes: ``cells.csv`` -> ``cells_per_image.csv``."""
    path = Path(cells_csv)
    return path.with_name(path.stem + SUFFIX)


class ImageSummary:
    """Counts classes per image as per-cell rows stream by (constant memory per image, not per cell)."""

    def __init__(self, class_names: Sequence[str]):
        self.class_names = list(class_names)
        self._counts: dict[str, dict[str, int]] = {}
        self._confidence: dict[str, float] = {}

    def add_rows(self, rows: Iterable[Mapping]) -> None:
        for row in rows:
            image, name = str(row["image"]), row.get("predicted_class") or ""
            counts = self._counts.setdefault(image, {})
            self._confidence.setdefault(image, 0.0)
            if name:  # a cell without a prediction counts for no class
                counts[name] = counts.get(name, 0) + 1
                self._confidence[image] += float(row.get("confidence") or 0.0)

    def rows(self) -> list[dict]:
        """One row per image, in the order met: cells, mean confidence, count and fraction per class."""
        table = []
        for image, counts in self._counts.items():
            cells = sum(counts.values())
            row = {"image": image, "cells": cells,
                   "mean_confidence": round(self._confidence[image] / cells, 6) if cells else ""}
            row.update({f"n_{name}": counts.get(name, 0) for name in self.class_names})
            row.update({f"fraction_{name}": round(counts.get(name, 0) / cells, 6) if cells else 0.0
                        for name in self.class_names})
            table.append(row)
        return table

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_write(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=summary_columns(self.class_names))
            writer.writeheader()
            writer.writerows(self.rows())
        return path


def summarise(rows: Iterable[Mapping], class_names: Sequence[str]) -> list[dict]:
    """The per-image summary rows of per-cell rows."""
    summary = ImageSummary(class_names)
    summary.add_rows(rows)
    return summary.rows()


def session_summary(session) -> ImageSummary:
    """The summary of the session's image (one row), from its predictions."""
    if session.predictions is None:
        from .errors import DinolocError

        raise DinolocError("There are no predictions yet: press Train and predict (or Predict) first.")
    summary = ImageSummary(session.predictions.class_names)
    summary.add_rows(session.rows())
    return summary
