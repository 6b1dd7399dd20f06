"""The annotation store: the class list and the class the user gave each cell.

Work is never lost: every change is written at once (atomically) to a JSON file next to the
image (``<image>.dinoloc.json``) or in a project folder (``<name>-<hash>.dinoloc.json``). Each
annotated cell keeps its centroid and a point inside it, so the annotations survive a new
segmentation: on restore every saved point is mapped to the cell under it in the current labels.
A file that cannot be read is renamed ``.corrupt`` and reported, never overwritten.

Every change can be undone and redone (``undo()``, ``redo()``): the store keeps the states before
its last changes. A change whose save fails is rolled back, so memory and file always agree.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from .annotation_history import Snapshot, UndoHistory
from .errors import DinolocError
from .files import atomic_write, write_json_atomic
from .palette import CLASS_PALETTE, hides_a_stain

FORMAT = "napari-dinoloc annotations"
VERSION = 1
SUFFIX = ".dinoloc.json"
#: Environment variable naming the folder for annotations of images that have no file.
HOME_VARIABLE = "NAPARI_DINOLOC_HOME"
#: A saved point that lands on background still finds a cell this close (pixels).
RESTORE_RADIUS = 6
#: Colours for new classes, in order: none near a channel's colour or grey (core/palette.py).
PALETTE = CLASS_PALETTE
#: The colours earlier versions gave new classes (Tableau): those that hide a stain are replaced on opening.
OLD_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
    "#17becf", "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
)
#: Keys that pick a class, in class-list order: 1–9 then 0 (ten classes).
KEYS = (*(str(i) for i in range(1, 10)), "0")


@dataclass
class AnnotationClass:
    name: str
    colour: str  # "#rrggbb"


@dataclass
class AnnotatedCell:
    label: int                     # the cell's id in the current label image
    name: str                      # its class
    centroid: tuple[float, float]  # (y, x) pixels
    inside: tuple[float, float]    # (y, x) a pixel of the cell: the centroid unless that is outside it


@dataclass
class RestoreReport:
    restored: int = 0
    lost: int = 0        # saved cells with no cell under them any more
    merged: int = 0      # saved cells that now fall into the same cell as another one

    def message(self) -> str:
        text = f"Restored {self.restored} annotated cell(s)"
        if self.lost:
            text += f"; {self.lost} fell on background after the new segmentation and were dropped"
        if self.merged:
            text += f"; {self.merged} fell into a cell already annotated and were dropped"
        return text + "."


@dataclass
class AnnotationStore(UndoHistory):
    """Class list + annotations of one image, saved after every change; every change can be undone."""

    path: Optional[Path] = None
    content_hash: str = ""
    image_name: str = ""
    classes: list[AnnotationClass] = field(default_factory=list)
    cells: dict[int, AnnotatedCell] = field(default_factory=dict)
    notice: str = ""      # what the user should be told after opening (restored, corrupt file kept aside)
    notice_is_warning: bool = False
    _undo: list[Snapshot] = field(default_factory=list, repr=False, compare=False)  # see annotation_history
    _redo: list[Snapshot] = field(default_factory=list, repr=False, compare=False)

    # ---- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, content_hash: str, image_name: str = "",
             default_classes: Sequence[str] = ()) -> "AnnotationStore":
        """The store saved at ``path`` for this image, or a new one with ``default_classes``."""
        path = Path(path)
        store = cls(path=path, content_hash=content_hash, image_name=image_name)
        if path.exists():
            store._load_or_set_aside()
        if not store.classes and not store.cells:
            store.classes = [AnnotationClass(name, PALETTE[i % len(PALETTE)]) for i, name in enumerate(default_classes)]
        return store

    def _load_or_set_aside(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            classes, cells, saved_hash = _parse(data)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            aside = _set_aside(self.path, ".corrupt")
            self.notice = (f"The annotation file {self.path.name} could not be read ({exc}); it was kept as "
                           f"{aside.name} and a new one was started. Fix or delete the old file.")
            self.notice_is_warning = True
            return
        if saved_hash and self.content_hash and saved_hash != self.content_hash:
            # Another version of the image (its pixels changed): these cells may not be the same.
            aside = _set_aside(self.path, f".{saved_hash[:12]}")
            self.notice = (f"{self.path.name} holds annotations of another version of this image (the pixels "
                           f"differ); it was kept as {aside.name} and a new one was started.")
            self.notice_is_warning = True
            return
        self.classes, self.cells = classes, cells
        self._replace_old_default_colours()
        if cells:
            self.notice = f"Restored {len(cells)} annotated cell(s) from {self.path.name}."

    def _replace_old_default_colours(self) -> None:
        """An earlier version's default colour that hides a stain or looks grey gets a palette colour;
        colours the user chose stay."""
        for cls in self.classes:
            if cls.colour.lower() in OLD_PALETTE and hides_a_stain(cls.colour):
                cls.colour = self._unused_colour()

    # ---- the class list -------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def colour_of(self, name: str) -> str:
        for cls in self.classes:
            if cls.name == name:
                return cls.colour
        return "#808080"

    def key_of(self, name: str) -> str:
        names = self.class_names
        return key_for_position(names.index(name)) if name in names else ""

    def class_for_key(self, key: str) -> Optional[str]:
        index = KEYS.index(key) if key in KEYS else len(self.classes)
        return self.classes[index].name if index < len(self.classes) else None

    def add_class(self, name: str, colour: Optional[str] = None) -> str:
        name = _check_class_name(name, self.class_names)
        with self._change(f"add the class {name!r}"):
            self.classes.append(AnnotationClass(name, colour or self._unused_colour()))
        return name

    def rename_class(self, old: str, new: str) -> str:
        if new == old:
            return old
        new = _check_class_name(new, [n for n in self.class_names if n != old])
        with self._change(f"rename {old!r} to {new!r}"):
            self._class(old).name = new
            for cell in self.cells.values():
                if cell.name == old:
                    cell.name = new
        return new

    def remove_class(self, name: str) -> int:
        """Remove a class and the annotations that use it; returns how many cells lost theirs."""
        cls = self._class(name)
        dropped = [label for label, cell in self.cells.items() if cell.name == name]
        with self._change(f"remove the class {name!r}"):
            self.classes.remove(cls)
            for label in dropped:
                del self.cells[label]
        return len(dropped)

    def move_class(self, name: str, offset: int) -> None:
        """Move a class up (-1) or down (+1) in the list: the order is the keys' and the model's."""
        index = self.class_names.index(name)
        target = min(max(index + offset, 0), len(self.classes) - 1)
        with self._change(f"move the class {name!r}"):
            self.classes.insert(target, self.classes.pop(index))

    def set_colour(self, name: str, colour: str) -> None:
        cls = self._class(name)
        with self._change(f"colour {name!r}"):
            cls.colour = colour

    def _class(self, name: str) -> AnnotationClass:
        for cls in self.classes:
            if cls.name == name:
                return cls
        raise DinolocError(f"There is no class {name!r}: choose one of {', '.join(self.class_names) or '(none yet)'}.")

    def _unused_colour(self) -> str:
        used = {c.colour for c in self.classes}
        return next((c for c in PALETTE if c not in used), PALETTE[len(self.classes) % len(PALETTE)])

    # ---- annotations ----------------------------------------------------------------------------
    @property
    def annotations(self) -> dict[int, str]:
        """{label: class name} of the annotated cells."""
        return {label: cell.name for label, cell in self.cells.items()}

    def annotate(self, label: int, name: str, centroid: Sequence[float], inside: Optional[Sequence[float]] = None) -> None:
        self._class(name)  # unknown classes are an error, not a silent new class
        centroid = (float(centroid[0]), float(centroid[1]))
        inside = centroid if inside is None else (float(inside[0]), float(inside[1]))
        with self._change(f"annotate cell {int(label)} as {name!r}"):
            self.cells[int(label)] = AnnotatedCell(int(label), name, centroid, inside)

    def clear(self, label: int) -> bool:
        if int(label) not in self.cells:
            return False
        with self._change(f"clear cell {int(label)}"):
            del self.cells[int(label)]
        return True

    def counts(self) -> dict[str, int]:
        counts = {name: 0 for name in self.class_names}
        for cell in self.cells.values():
            counts[cell.name] = counts.get(cell.name, 0) + 1
        return counts

    def used_class_names(self) -> list[str]:
        """Classes with at least one annotated cell, in the list's order."""
        counts = self.counts()
        return [name for name in self.class_names if counts.get(name)]

    # ---- re-segmentation -------------------------------------------------------------------------
    def restore_onto(self, labels: np.ndarray, radius: int = RESTORE_RADIUS) -> RestoreReport:
        """Give every saved cell the label of the cell now under its saved point."""
        report = RestoreReport()
        restored: dict[int, AnnotatedCell] = {}
        for cell in self.cells.values():
            label = label_near(labels, cell.inside, radius) or label_near(labels, cell.centroid, radius)
            if not label:
                report.lost += 1
            elif label in restored:
                report.merged += 1
            else:
                restored[label] = AnnotatedCell(label, cell.name, cell.centroid, cell.inside)
        report.restored = len(restored)
        changed = {k: c.name for k, c in restored.items()} != self.annotations
        self.cells = restored
        self._undo.clear()  # earlier states name cells of the old segmentation
        self._redo.clear()
        if changed:
            self.save()
        return report

    # ---- files ----------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "content_hash": self.content_hash,
            "image": self.image_name,
            "classes": [{"name": c.name, "colour": c.colour, "key": self.key_of(c.name)} for c in self.classes],
            "cells": [
                {"label": c.label, "class": c.name,
                 "centroid_y": round(c.centroid[0], 2), "centroid_x": round(c.centroid[1], 2),
                 "inside_y": round(c.inside[0], 2), "inside_x": round(c.inside[1], 2)}
                for c in sorted(self.cells.values(), key=lambda c: c.label)
            ],
        }

    def save(self) -> None:
        if self.path is not None:
            write_json_atomic(self.path, self.to_json())

    def rows(self) -> list[dict]:
        """One row per annotated cell: label, class, centroid_y, centroid_x."""
        return [
            {"label": c.label, "class": c.name, "centroid_y": round(c.centroid[0], 2), "centroid_x": round(c.centroid[1], 2)}
            for c in sorted(self.cells.values(), key=lambda c: c.label)
        ]

    def write_csv(self, path: str | Path) -> Path:
        with atomic_write(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["label", "class", "centroid_y", "centroid_x"])
            writer.writeheader()
            writer.writerows(self.rows())
        return Path(path)


def key_for_position(index: int) -> str:
    """The key of the class at ``index`` in the list ('' past the tenth)."""
    return KEYS[index] if 0 <= index < len(KEYS) else ""


def key_changes(before: Sequence[str], after: Sequence[str]) -> list[str]:
    """'golgi: key 3 -> 2' for each class in both lists whose key changed (a class removed or moved
    shifts the keys of the classes after it)."""
    changes = []
    for index, name in enumerate(after):
        if name in before:
            old, new = key_for_position(list(before).index(name)), key_for_position(index)
            if old != new:
                changes.append(f"{name}: key {old or 'none'} -> {new or 'none'}")
    return changes


# ---- where the store lives --------------------------------------------------------------------
def default_project_folder() -> Path:
    """Where annotations of images without a file go (``$NAPARI_DINOLOC_HOME`` or ~/.napari-dinoloc)."""
    base = os.environ.get(HOME_VARIABLE) or str(Path.home() / ".napari-dinoloc")
    return Path(base) / "annotations"


def store_path(content_hash: str, image_name: str = "image", image_path: Optional[str | Path] = None,
               project_folder: Optional[str | Path] = None, suffix: str = SUFFIX) -> Path:
    """``<image>.dinoloc.json`` next to an image file; else ``<name>-<hash12>.dinoloc.json`` in the
    project folder (keyed by the pixels' hash, so the same image finds its annotations again).
    ``suffix``: other per-image files (the analysis store) follow the same convention."""
    if project_folder is None and image_path:
        return Path(f"{image_path}{suffix}")
    folder = Path(project_folder) if project_folder else default_project_folder()
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{safe_image_name(image_name)}-{content_hash[:12]}{suffix}"


def safe_image_name(image_name: str) -> str:
    """The image's name as a file name part (what ``store_path`` uses in a project folder)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", image_name or "image").strip("._") or "image"


def _set_aside(path: Path, suffix: str) -> Path:
    target = path.with_name(path.name + suffix)
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}{suffix}.{n}")
        n += 1
    os.replace(path, target)
    return target


def _parse(data) -> tuple[list[AnnotationClass], dict[int, AnnotatedCell], str]:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError("not a napari-dinoloc annotation file")
    if int(data.get("version", 0)) > VERSION:
        raise ValueError(f"written by a newer napari-dinoloc (version {data['version']})")
    classes = [AnnotationClass(str(c["name"]), str(c.get("colour") or "#808080")) for c in data["classes"]]
    names = {c.name for c in classes}
    cells = {}
    for row in data["cells"]:
        if row["class"] not in names:
            raise ValueError(f"cell {row['label']} has the class {row['class']!r}, which is not in the class list")
        centroid = (float(row["centroid_y"]), float(row["centroid_x"]))
        inside = (float(row.get("inside_y", centroid[0])), float(row.get("inside_x", centroid[1])))
        cells[int(row["label"])] = AnnotatedCell(int(row["label"]), str(row["class"]), centroid, inside)
    return classes, cells, str(data.get("content_hash", ""))


def _check_class_name(name: str, existing: Iterable[str]) -> str:
    name = str(name).strip()
    if not name:
        raise DinolocError("A class needs a name: type one, e.g. 'nucleoli'.")
    if name in set(existing):
        raise DinolocError(f"There is already a class {name!r}: give the new class another name.")
    return name


# ---- geometry -----------------------------------------------------------------------------------
def label_near(labels: np.ndarray, point: Sequence[float], radius: int = RESTORE_RADIUS) -> int:
    """The label under ``point`` (y, x); on background, the closest labelled pixel within ``radius``."""
    y, x = int(round(point[0])), int(round(point[1]))
    height, width = labels.shape
    if 0 <= y < height and 0 <= x < width and labels[y, x]:
        return int(labels[y, x])
    y0, y1 = max(y - radius, 0), min(y + radius + 1, height)
    x0, x1 = max(x - radius, 0), min(x + radius + 1, width)
    if y0 >= y1 or x0 >= x1:
        return 0
    window = labels[y0:y1, x0:x1]
    ys, xs = np.nonzero(window)
    if len(ys) == 0:
        return 0
    distance = (ys + y0 - y) ** 2 + (xs + x0 - x) ** 2
    best = int(np.argmin(distance))
    return int(window[ys[best], xs[best]]) if distance[best] <= radius ** 2 else 0


def point_inside(labels: np.ndarray, label: int, centroid: Sequence[float], bbox: Optional[Sequence[int]] = None) -> tuple[float, float]:
    """``centroid`` if it lies in the cell, else the cell's pixel closest to it (concave cells).
    ``bbox`` (min_row, min_col, max_row, max_col) limits the search to the cell's box."""
    y, x = int(round(centroid[0])), int(round(centroid[1]))
    if 0 <= y < labels.shape[0] and 0 <= x < labels.shape[1] and labels[y, x] == label:
        return float(centroid[0]), float(centroid[1])
    y0, x0, y1, x1 = (0, 0, *labels.shape) if bbox is None else (int(v) for v in bbox)
    ys, xs = np.nonzero(labels[y0:y1, x0:x1] == label)
    if len(ys) == 0:
        raise DinolocError(f"There is no cell {label} in the current labels: segment again or pick another cell.")
    ys, xs = ys + y0, xs + x0
    best = int(np.argmin((ys - centroid[0]) ** 2 + (xs - centroid[1]) ** 2))
    return float(ys[best]), float(xs[best])


# ---- what to annotate next ---------------------------------------------------------------------
def next_cell_to_annotate(labels: Sequence[int], annotated: Iterable[int], predictions=None,
                          rng: Optional[np.random.Generator] = None) -> Optional[int]:
    """The unannotated cell whose two most probable classes are closest (CellProfiler Analyst's
    "fetch uncertain"); before any prediction, a random unannotated cell. None when all are done."""
    done = {int(label) for label in annotated}
    if predictions is not None and len(predictions.labels):
        margin = np.asarray(predictions.margin, dtype=np.float64)
        open_rows = [i for i, label in enumerate(predictions.labels) if int(label) not in done]
        if open_rows:
            return int(predictions.labels[min(open_rows, key=lambda i: margin[i])])
    remaining = [int(label) for label in labels if int(label) not in done]
    if not remaining:
        return None
    rng = rng or np.random.default_rng()
    return remaining[int(rng.integers(len(remaining)))]
