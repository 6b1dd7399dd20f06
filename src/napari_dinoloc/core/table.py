"""The per-cell table: one row per cell, columns in a stable, documented order (docs/csv.md)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from .files import atomic_write

#: Columns before the per-class probabilities.
LEADING_COLUMNS = ("image", "label", "centroid_y", "centroid_x", "area", "predicted_class", "confidence")
#: Columns after the per-class probabilities.
TRAILING_COLUMNS = ("user_label", "backbone", "weights_hash", "strategy", "unfamiliar")


def columns(class_names: Sequence[str]) -> list[str]:
    return [*LEADING_COLUMNS, *(f"prob_{name}" for name in class_names), *TRAILING_COLUMNS]


def cell_rows(
    image_name: str,
    table,
    predictions,
    user_labels: Mapping[int, str] | None = None,
    model_info: Mapping[str, str] | None = None,
) -> list[dict]:
    """Rows for every cell of ``table`` (a CellTable); ``predictions`` may be None (empty columns)."""
    user_labels = user_labels or {}
    model_info = model_info or {}
    class_names = predictions.class_names if predictions is not None else ()
    by_label = _prediction_index(predictions)
    rows = []
    for i, label in enumerate(table.label):
        label = int(label)
        row = {
            "image": image_name,
            "label": label,
            "centroid_y": round(float(table.centroid_y[i]), 2),
            "centroid_x": round(float(table.centroid_x[i]), 2),
            "area": int(table.area[i]),
        }
        row.update(_prediction_fields(predictions, by_label.get(label), class_names))
        row["user_label"] = user_labels.get(label, "")
        for key in ("backbone", "weights_hash", "strategy"):
            row[key] = model_info.get(key, "")
        row["unfamiliar"] = _unfamiliar_field(predictions, by_label.get(label))
        rows.append(row)
    return rows


def _prediction_index(predictions) -> dict[int, int]:
    if predictions is None:
        return {}
    return {int(label): i for i, label in enumerate(predictions.labels)}


def _prediction_fields(predictions, index: int | None, class_names) -> dict:
    if predictions is None or index is None:
        return {"predicted_class": "", "confidence": "", **{f"prob_{c}": "" for c in class_names}}
    probabilities = predictions.probabilities[index]
    best = int(np.argmax(probabilities))
    fields = {"predicted_class": class_names[best], "confidence": round(float(probabilities[best]), 6)}
    fields.update({f"prob_{c}": round(float(p), 6) for c, p in zip(class_names, probabilities)})
    return fields


def _unfamiliar_field(predictions, index: int | None):
    """True/False; empty without a prediction. A model saved before the flag existed gives False."""
    if predictions is None or index is None:
        return ""
    return bool(predictions.unfamiliar[index])


class CsvTableWriter:
    """Streams rows into a temporary file and moves it into place only when all went well,
    so many images can be written at constant memory and a failure leaves no half-written CSV."""

    def __init__(self, path: str | Path, class_names: Sequence[str]):
        self.path = Path(path)
        self.fieldnames = columns(class_names)
        self._context = atomic_write(self.path, "w", newline="", encoding="utf-8")
        self._writer = None

    def __enter__(self) -> "CsvTableWriter":
        handle = self._context.__enter__()
        self._writer = csv.DictWriter(handle, fieldnames=self.fieldnames, extrasaction="raise")
        self._writer.writeheader()
        return self

    def write_rows(self, rows: Iterable[dict]) -> None:
        self._writer.writerows(rows)

    def __exit__(self, *exc_info) -> bool:
        return bool(self._context.__exit__(*exc_info))


def write_table(path: str | Path, rows: Sequence[dict], class_names: Sequence[str]) -> Path:
    with CsvTableWriter(path, class_names) as writer:
        writer.write_rows(rows)
    return Path(path)


def read_table(path: str | Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
