"""The analysis store: an image's cells, how they were found, and its latest predictions.

Saved (atomically) whenever they change, beside the annotation store and named the same way
(``<image>.dinoloc-analysis.npz`` next to an image file, else ``<name>-<hash12>.dinoloc-analysis.npz``
in the project folder), so opening the image again brings the cells and predictions back without
segmenting. One ``.npz`` of plain arrays plus a JSON description, read without pickle. A file that
does not fit the image (other pixels, other size, damaged) is ignored with a note and replaced at
the next save; predictions remember what made them, so restored ones that no longer match the
annotations or the model file are marked stale.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from .annotations import default_project_folder, safe_image_name, store_path
from .files import atomic_write, hash_array
from .heads import Predictions

FORMAT = "napari-dinoloc analysis"
VERSION = 1
SUFFIX = ".dinoloc-analysis.npz"


@dataclass(frozen=True)
class SavedPredictions:
    predictions: Predictions
    signature: dict   # what made them: the embedding's signature, the classifier, its annotations or model file
    saved_at: str     # local time, ISO format


@dataclass
class AnalysisStore:
    """The cells and latest predictions of one image, as last saved."""

    path: Optional[Path]
    content_hash: str
    image_shape: tuple[int, int]
    image_name: str = ""
    labels: Optional[np.ndarray] = None   # (Y, X) int32, the cells as last found
    settings: dict = field(default_factory=dict)  # how they were found (segmentation settings or a label image)
    cells_saved_at: str = ""
    predictions: Optional[SavedPredictions] = None
    notes: list[str] = field(default_factory=list)  # why something saved was not restored
    _labels_hash: str = ""

    # ---- opening ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, content_hash: str, image_shape: Sequence[int], image_name: str = "") -> "AnalysisStore":
        """What is saved at ``path`` for this image; parts that do not fit it are left out with a note."""
        store = cls(Path(path), content_hash, tuple(int(s) for s in image_shape[-2:]), image_name)
        if store.path.exists():
            try:
                store._load()
            except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
                store.labels, store.predictions = None, None
                store.notes.append(f"The saved cells in {store.path.name} could not be read ({exc}); segment again "
                                   "(the file is replaced when the cells are saved).")
        return store

    def _load(self) -> None:
        with np.load(self.path, allow_pickle=False) as saved:
            meta = json.loads(str(saved["meta"][()]))
            if meta.get("format") != FORMAT or int(meta.get("version", 0)) > VERSION:
                raise ValueError("not a napari-dinoloc analysis file of a version this one reads")
            if meta.get("content_hash") != self.content_hash:
                self.notes.append(f"{self.path.name} holds the cells of another version of this image (the pixels "
                                  "differ): they were not restored.")
                return
            labels = saved["labels"]
            if labels.ndim != 2 or labels.dtype.kind not in "iu":
                raise ValueError(f"the saved cells are a {labels.dtype} array of shape {labels.shape}")
            if tuple(labels.shape) != self.image_shape:
                self.notes.append(f"The saved cells are {labels.shape[1]}×{labels.shape[0]} pixels but the image is "
                                  f"{self.image_shape[1]}×{self.image_shape[0]}: they were not restored.")
                return
            labels = labels.astype(np.int32, copy=False)
            if hash_array(labels) != meta.get("labels_hash"):
                raise ValueError("the saved cells are damaged (their checksum differs)")
            self.labels, self._labels_hash = labels, meta["labels_hash"]
            self.settings, self.cells_saved_at = dict(meta.get("settings") or {}), str(meta.get("cells_saved_at", ""))
            if meta.get("predictions"):
                self.predictions = self._checked_predictions(meta["predictions"], saved)

    def _checked_predictions(self, meta: dict, saved) -> Optional[SavedPredictions]:
        labels, probabilities = saved["prediction_labels"], saved["probabilities"]
        names = tuple(str(name) for name in meta["class_names"])
        problem = ""
        if meta.get("labels_hash") != self._labels_hash:
            problem = "they belong to other cells"
        elif probabilities.ndim != 2 or probabilities.shape != (len(labels), len(names)):
            problem = f"their sizes do not agree ({len(labels)} cells, {probabilities.shape} probabilities)"
        elif not np.isfinite(probabilities).all() or not np.isin(labels, self.labels).all():
            problem = "they hold NaN values or cells the label image does not have"
        if problem:
            self.notes.append(f"The saved predictions were not restored: {problem}. Predict again.")
            return None
        predictions = Predictions(labels.astype(np.int64), names, probabilities.astype(np.float32))
        return SavedPredictions(predictions, dict(meta.get("signature") or {}), str(meta.get("saved_at", "")))

    # ---- saving -----------------------------------------------------------------------------------
    def save_cells(self, labels: np.ndarray, settings: Optional[Mapping] = None) -> bool:
        """Keep ``labels`` and how they were found; predictions of other cells are dropped.
        False when these cells are saved already (nothing written)."""
        labels = np.asarray(labels, dtype=np.int32)
        labels_hash = hash_array(labels)
        settings = dict(settings or {})
        if labels_hash == self._labels_hash:
            if not settings or settings == self.settings:
                return False
        else:
            self.labels, self._labels_hash, self.predictions, self.cells_saved_at = labels, labels_hash, None, _now()
        self.settings = settings
        self.save()
        return True

    def save_predictions(self, predictions: Optional[Predictions], signature: Optional[Mapping] = None) -> None:
        """Keep the latest predictions of the saved cells (None forgets them)."""
        if self.labels is None or (predictions is None and self.predictions is None):
            return
        self.predictions = None if predictions is None else SavedPredictions(predictions, dict(signature or {}), _now())
        self.save()

    def save(self) -> None:
        if self.path is None or self.labels is None:
            return
        meta = {"format": FORMAT, "version": VERSION, "content_hash": self.content_hash, "image": self.image_name,
                "shape": list(self.image_shape), "labels_hash": self._labels_hash, "settings": self.settings,
                "cells_saved_at": self.cells_saved_at, "predictions": None}
        arrays = {"labels": self.labels}
        if self.predictions is not None:
            p = self.predictions
            meta["predictions"] = {"class_names": list(p.predictions.class_names), "signature": p.signature,
                                   "saved_at": p.saved_at, "labels_hash": self._labels_hash}
            arrays["prediction_labels"] = np.asarray(p.predictions.labels, dtype=np.int64)
            arrays["probabilities"] = np.asarray(p.predictions.probabilities, dtype=np.float32)
        with atomic_write(self.path, "wb") as handle:
            np.savez_compressed(handle, meta=np.array(json.dumps(meta, default=str)), **arrays)

    # ---- telling the user ---------------------------------------------------------------------------
    def summary(self, annotations: Mapping[int, str]) -> str:
        """'Restored N cells and predictions from <time>' (with why the predictions are stale, if they are)."""
        if self.labels is None:
            return ""
        n_cells = len(np.unique(self.labels)) - int((self.labels == 0).any())
        what = f"{n_cells} cells and predictions" if self.predictions is not None else f"{n_cells} cells"
        text = f"Restored {what} from {_readable(self.cells_saved_at)}"
        if self.predictions is not None:
            stale = stale_reason(self.predictions.signature, annotations)
            text += (f"; the predictions are stale ({stale}): predict again to update them" if stale
                     else f" (predictions from {_readable(self.predictions.saved_at)})")
        return text + "."


# ---- what made the predictions --------------------------------------------------------------------
def annotations_hash(annotations: Mapping[int, str]) -> str:
    pairs = sorted((int(label), str(name)) for label, name in annotations.items())
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]


def prediction_signature(embedding_signature: Optional[Mapping], head_kind: str, annotations: Mapping[int, str],
                         source: Optional[Mapping] = None) -> dict:
    """What made a set of predictions: the embedding, the classifier and what it learnt from
    (the annotations, or a model file given as ``source={"bundle": path}``)."""
    signature = {"embedding": dict(embedding_signature or {}), "classifier": head_kind,
                 "annotations_hash": annotations_hash(annotations)}
    bundle = (source or {}).get("bundle")
    if bundle:
        signature["bundle"] = str(bundle)
        signature["bundle_stamp"] = _file_stamp(bundle)
    return signature


def stale_reason(signature: Mapping, annotations: Mapping[int, str]) -> str:
    """Why predictions made as ``signature`` says are out of date now ('' when they are not)."""
    if signature.get("bundle"):
        path = Path(signature["bundle"])
        if not path.exists():
            return f"the model file {path.name} is gone"
        return "" if _file_stamp(path) == signature.get("bundle_stamp") else f"the model file {path.name} changed since"
    saved = signature.get("annotations_hash")
    return "your annotations changed since" if saved and saved != annotations_hash(annotations) else ""


# ---- where the store lives --------------------------------------------------------------------------
def analysis_path(content_hash: str, image_name: str = "image", image_path: Optional[str | Path] = None,
                  project_folder: Optional[str | Path] = None) -> Path:
    """Beside the image's annotation file (``core.annotations.store_path``)."""
    return store_path(content_hash, image_name, image_path, project_folder, suffix=SUFFIX)


def may_have_saved(image_name: str, image_path: Optional[str | Path] = None,
                   project_folder: Optional[str | Path] = None) -> bool:
    """Whether a store may exist for this image, without hashing its pixels (a quick first check)."""
    if project_folder is None and image_path:
        return Path(f"{image_path}{SUFFIX}").exists()
    folder = Path(project_folder) if project_folder else default_project_folder()
    return folder.is_dir() and any(folder.glob(f"{safe_image_name(image_name)}-*{SUFFIX}"))


def _file_stamp(path: str | Path) -> list:
    try:
        stat = Path(path).stat()
    except OSError:
        return []
    return [stat.st_size, stat.st_mtime_ns]


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def _readable(iso_time: str) -> str:
    try:
        return datetime.fromisoformat(iso_time).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return "an earlier session"
