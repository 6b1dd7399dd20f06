"""Writer: the cells Labels layer's per-cell table as CSV, in the documented columns (docs/csv.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .core.table import CsvTableWriter, columns


def write_cells_csv(path: str, data: Any, attributes: dict) -> list[str]:
    """Write one row per cell; the file appears only when it is complete (atomic)."""
    path = path if str(path).lower().endswith(".csv") else f"{path}.csv"
    image = attributes.get("metadata", {}).get("dinoloc_image_name") or attributes.get("name", "")
    rows = _feature_rows(attributes.get("features")) or _rows_from_labels(np.asarray(data), image)
    class_names = [c[len("prob_"):] for c in (rows[0] if rows else {}) if c.startswith("prob_")]
    wanted = columns(class_names)
    with CsvTableWriter(path, class_names) as writer:
        writer.write_rows({c: _value(row.get(c, image if c == "image" else "")) for c in wanted} for row in rows)
    return [str(Path(path))]


def _feature_rows(features) -> list[dict]:
    if features is None or len(features) == 0 or "label" not in getattr(features, "columns", ()):
        return []
    return features.to_dict("records")


def _rows_from_labels(labels: np.ndarray, image: str) -> list[dict]:
    """A layer without napari-dinoloc features: label, centroid and area of every cell."""
    from .core.segmentation import CellTable
    from .core.table import cell_rows

    return cell_rows(image, CellTable.from_labels(labels.astype(np.int64)), predictions=None)


def _value(value):
    """NaN (pandas' empty cell) is written as an empty field, like the engine's own CSV."""
    if isinstance(value, float) and np.isnan(value):
        return ""
    return value
