"""The training set of annotated cells, and training a head into a model bundle.

One way for the command line and the widgets: cells come from sessions (one image in memory at a
time), classes from an annotation CSV or a panel's annotation store.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from .. import defaults
from ..errors import DinolocError
from ..progress import CancelToken, ProgressCallback


@dataclass
class TrainingSet:
    vectors: np.ndarray          # (N, D) embeddings of the annotated cells
    classes: list                # their classes
    last_session: Any = None     # the last image's session (its stains describe the model)
    images: list = field(default_factory=list)  # the image of each cell (folds split by image)
    baseline: Optional[np.ndarray] = None  # the same cells described by the classic features, when asked


@dataclass
class TrainedModel:
    head: Any                    # core.heads.Head
    bundle: Any                  # core.bundle.ModelBundle
    evaluation: Any = None       # core.evaluation.Evaluation, when classes allow cross-validation
    cells: int = 0
    path: Optional[Path] = None
    classes: list = field(default_factory=list)


def check_classes(annotations: Mapping[int, str], class_names) -> None:
    """The engine's own class checks (two classes, two cells each), before any crop is made."""
    from ..heads import encode_classes

    if not annotations:
        raise DinolocError("No annotated cells yet: click cells of at least two classes (step 3), then fine-tune.")
    encode_classes(list(annotations.values()), len(annotations), class_names)


def training_set(sessions: Iterable, annotations_path, notify=None, baseline=None) -> TrainingSet:
    """Embeddings of the annotated cells of every image (only these stay in memory). ``notify(line)``
    hears of odd annotation rows (conflicting classes, labels that are not cells of the image).
    ``baseline`` (e.g. a ClassicBackbone): the same cells also described by it, for a comparison."""
    from ..batch import classes_for_image, read_cell_classes

    cell_classes = read_cell_classes(annotations_path)
    _tell(notify, cell_classes.notes)
    vectors, classes, last, images, other = [], [], None, [], []
    for session in sessions:
        annotations = classes_for_image(cell_classes, session.image.name, cell_ids=session.table.label)
        _tell(notify, annotations.notes)
        if annotations:
            rows, names = session.annotated_training_set(annotations)
            vectors.append(rows)
            classes += names
            images += [session.image.name] * len(names)
            if baseline is not None:
                other.append(baseline_rows(session, baseline, annotations))
        last = session
    if not vectors:
        raise DinolocError(f"No cell of these images is annotated in {annotations_path}: check its image and label columns.")
    return TrainingSet(np.concatenate(vectors), classes, last, images, np.concatenate(other) if other else None)


def baseline_rows(session, baseline, annotations) -> np.ndarray:
    """The annotated cells' rows of ``baseline``'s features, in the order annotated_training_set gives them."""
    found = baseline.embed_cells(session.image, session.labels, None, table=session.table)
    row_of = {int(label): i for i, label in enumerate(found.labels)}
    wanted = sorted(row_of[int(label)] for label, name in annotations.items() if name and int(label) in row_of)
    return found.vectors[wanted]


def annotated_images(jobs: Sequence, options, annotations_path, progress: Optional[ProgressCallback] = None) -> Iterator[tuple]:
    """(image, labels, {label: class}) for each image with annotations, one image in memory at a time."""
    from ..batch import classes_for_image, prepare_session, read_cell_classes

    cell_classes = read_cell_classes(annotations_path)
    _tell(getattr(options, "notify", None), cell_classes.notes)
    for job in jobs:
        session = prepare_session(job, options, progress=progress)
        annotations = classes_for_image(cell_classes, session.image.name, cell_ids=session.table.label)
        _tell(getattr(options, "notify", None), annotations.notes)
        if annotations:
            yield session.image, session.labels, annotations


def embedded_sessions(jobs: Sequence, options, backbone, cache=None, progress: Optional[ProgressCallback] = None,
                      cancel: Optional[CancelToken] = None, skips=None):
    from ..batch import iter_embedded_sessions

    return iter_embedded_sessions(jobs, options, backbone, cache=cache, progress=progress, cancel=cancel, skips=skips)


def _tell(notify, lines) -> None:
    for line in lines if notify is not None else ():
        notify(line)


def cross_validate_if_possible(kind: str, vectors, classes: Sequence[str], seed: int):
    from ..evaluation import cross_validate

    if min(Counter(classes).values()) < 2 or len(set(classes)) < 2:
        return None  # train_head explains what is missing
    return cross_validate(kind, vectors, classes, folds=5, seed=seed)


def train_model(jobs: Sequence, options, backbone, annotations_path, head_kind: str = defaults.HEAD, seed: int = 0,
                out=None, cache=None, progress: Optional[ProgressCallback] = None,
                cancel: Optional[CancelToken] = None) -> TrainedModel:
    """Train ``head_kind`` on the annotated cells of ``jobs``; a bundle (written to ``out`` when given)."""
    from ..bundle import bundle_for_head, save_bundle
    from ..files import check_writable
    from ..heads import train_head

    if out is not None:
        check_writable(out)
    cells = training_set(embedded_sessions(jobs, options, backbone, cache, progress, cancel), annotations_path,
                         getattr(options, "notify", None))
    evaluation = cross_validate_if_possible(head_kind, cells.vectors, cells.classes, seed)
    head = train_head(head_kind, cells.vectors, cells.classes, progress=progress, seed=seed)
    metrics = evaluation.to_dict() if evaluation else {}
    bundle = bundle_for_head(head, backbone, cells.last_session.image.stains, options.embed, cells.classes, metrics, seed)
    path = save_bundle(bundle, out) if out is not None else None
    return TrainedModel(head, bundle, evaluation, len(cells.classes), path, cells.classes)


def model_summary(model: TrainedModel, kind: str) -> str:
    return f"{model.path}: {kind} head on {model.cells} cells, classes {', '.join(model.head.class_names)}"
