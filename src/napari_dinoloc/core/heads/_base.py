"""What every head shares: Predictions, input checks, the Head base class.

Every head maps (N, D) embeddings to (N, K) class probabilities. Heads are small: their state is a
few numpy arrays plus a JSON-able config, so a model bundle stores them without pickle.

Class order: the sorted class names, unless ``class_names=`` is passed, in which case that order is
kept (so colours and CSV columns stay stable across retraining). Every listed class needs cells.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional, Sequence

import numpy as np

from ..errors import DinolocError
from ..progress import CancelToken, ProgressCallback, check_cancel
from ._familiarity import CONFIG as FAMILIARITY_CONFIG, TENSOR as FAMILIARITY_TENSOR, Familiarity, fit_familiarity

MIN_CELLS_PER_CLASS = 2


# --------------------------------------------------------------------------------------------
# Predictions
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Predictions:
    """Per-cell class probabilities; row i belongs to the cell with label ``labels[i]``.

    ``unfamiliar[i]``: cell i lies far from every training cell (its prediction is a guess). Not given
    (a head saved before this was measured): all False and ``familiarity_known`` False.
    """

    labels: np.ndarray
    class_names: tuple[str, ...]
    probabilities: np.ndarray
    unfamiliar: Optional[np.ndarray] = None
    familiarity_known: bool = True

    def __post_init__(self) -> None:
        n_cells, n_classes = self.probabilities.shape
        if len(self.labels) != n_cells or len(self.class_names) != n_classes:
            raise ValueError("labels, class_names and probabilities do not agree in size")
        if self.unfamiliar is None:
            object.__setattr__(self, "unfamiliar", np.zeros(n_cells, dtype=bool))
            object.__setattr__(self, "familiarity_known", False)
        elif len(self.unfamiliar) != n_cells:
            raise ValueError("labels and unfamiliar do not agree in size")
        else:
            object.__setattr__(self, "unfamiliar", np.asarray(self.unfamiliar, dtype=bool))

    @property
    def predicted(self) -> np.ndarray:
        """(N,) index of the most probable class."""
        return np.argmax(self.probabilities, axis=1)

    @property
    def predicted_names(self) -> np.ndarray:
        """(N,) array of str: the most probable class name."""
        return np.asarray(self.class_names, dtype=str)[self.predicted]

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=1)

    @property
    def margin(self) -> np.ndarray:
        """Top-1 minus top-2 probability; small values mark the cells worth annotating next."""
        if len(self.probabilities) == 0:
            return np.zeros(0, dtype=np.float32)
        top2 = np.sort(self.probabilities, axis=1)[:, -2:]
        return top2[:, 1] - top2[:, 0]


# --------------------------------------------------------------------------------------------
# Input checks shared by all heads (and by evaluation.py)
# --------------------------------------------------------------------------------------------
def as_vectors(vectors, allow_empty: bool = False) -> np.ndarray:
    """(N, D) finite float32, or a DinolocError saying what is wrong."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise DinolocError(f"Expected a table of cell embeddings (cells x dimensions), got an array of shape {array.shape}.")
    if len(array) == 0 and not allow_empty:
        raise DinolocError("No cell embeddings were given: embed the cells first.")
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise DinolocError(
            f"{int(bad.sum())} cell embedding(s) contain NaN or infinite values (first at row {int(np.argmax(bad))}): "
            "re-run the embedding (check the image for empty or saturated crops) or leave those cells out."
        )
    return array


def encode_classes(
    classes: Sequence[str], n_vectors: int, class_names: Optional[Sequence[str]] = None,
    min_cells: int = MIN_CELLS_PER_CLASS,
) -> tuple[tuple[str, ...], np.ndarray]:
    """Check the training classes; return the class order and each cell's class index."""
    names = [str(c) for c in classes]
    if len(names) != n_vectors:
        raise DinolocError(
            f"{n_vectors} cell embeddings but {len(names)} class annotations: give exactly one class per embedded cell."
        )
    if any(not n.strip() for n in names):
        raise DinolocError("Some cells have an empty class name: pass only annotated cells, each with a class name.")
    order = _class_order(names, class_names)
    if len(order) < 2:
        raise DinolocError(
            f"Only one class ({order[0] if order else 'none'}) is annotated: annotate cells of at least two classes."
        )
    counts = {name: 0 for name in order}
    for name in names:
        counts[name] += 1
    scarce = [f"{name!r} ({count})" for name, count in counts.items() if count < min_cells]
    if scarce:
        raise DinolocError(
            f"Class(es) {', '.join(scarce)} have fewer than {min_cells} annotated cells: annotate at least "
            f"{min_cells} cells of every class, or remove the class."
        )
    index = {name: i for i, name in enumerate(order)}
    return order, np.array([index[n] for n in names], dtype=np.int64)


def _class_order(names: list[str], class_names: Optional[Sequence[str]]) -> tuple[str, ...]:
    if class_names is None:
        return tuple(sorted(set(names)))
    order = tuple(str(c) for c in class_names)
    if len(set(order)) != len(order):
        raise DinolocError(f"The class list {list(order)} names a class twice: give each class once.")
    unknown = sorted(set(names) - set(order))
    if unknown:
        raise DinolocError(f"Cells are annotated with class(es) {unknown} that are not in the class list {list(order)}: add them to the list.")
    return order


def _class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """'Balanced' weights n / (K * n_c), so rare classes count as much as common ones."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    return np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)


_threads_lock = threading.Lock()
_threads_users = 0
_threads_before = 0


@contextmanager
def one_torch_thread(needed: bool = True):
    """Run torch on one thread. Head matrices are small: extra threads gain little, and when the
    cores are busy (a UMAP process, other jobs) spinning OpenMP threads made MLP training 5-40x
    slower in our measurements. torch's thread count is process-wide: the first user saves it and
    the last one restores it, so heads used from several threads at once leave it as it was."""
    if not needed:  # kNN is numpy only: don't import torch for it
        yield
        return
    import torch

    global _threads_users, _threads_before
    with _threads_lock:
        if _threads_users == 0:
            _threads_before = torch.get_num_threads()
            torch.set_num_threads(1)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_before)


def _standardise_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0, dtype=np.float64)
    std = x.std(axis=0, dtype=np.float64)
    # Constant dimensions (std 0) stay at 0 instead of dividing by zero, like StandardScaler.
    return mean.astype(np.float32), np.where(std > 1e-12, std, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------
class Head:
    """A trained map from embeddings to class probabilities. Subclasses fill in the maths."""

    kind: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    trains_with_torch: ClassVar[bool] = True
    predicts_with_torch: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, class_names: Optional[Sequence[str]] = None, **params) -> None:
        try:
            self.params = self._check_params({**self.defaults, **_known_params(self, params)})
        except (TypeError, ValueError) as exc:
            raise DinolocError(f"A setting of the {self.kind} head has the wrong type ({exc}); defaults: {self.defaults}.") from exc
        self.class_names: tuple[str, ...] = tuple(str(c) for c in class_names) if class_names is not None else ()
        self.input_dim: Optional[int] = None  # embedding dimensions it was trained on
        self.familiarity: Optional[Familiarity] = None  # where its training cells lie: flags unfamiliar cells
        self._requested_names = class_names is not None

    # -- training ------------------------------------------------------------------------------
    def fit(self, vectors, classes: Sequence[str], progress: Optional[ProgressCallback] = None,
            cancel: Optional[CancelToken] = None) -> "Head":
        x = as_vectors(vectors)
        names, y = encode_classes(classes, len(x), self.class_names if self._requested_names else None)
        return self.fit_encoded(x, y, names, progress, cancel)

    def fit_encoded(self, x: np.ndarray, y: np.ndarray, class_names: Sequence[str],
                    progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> "Head":
        """Train on checked inputs: y holds indices into class_names (a class may have 1 cell here,
        which cross-validation and low-shot curves need)."""
        check_cancel(cancel)
        self.class_names, self.input_dim = tuple(class_names), None  # untrained until _train finishes
        self.familiarity = None
        with one_torch_thread(self.trains_with_torch):
            self._train(np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64), progress, cancel)
        self.familiarity = fit_familiarity(x, seed=int(self.params.get("seed", 0)))
        self.input_dim = int(x.shape[1])
        return self

    # -- prediction ------------------------------------------------------------------------------
    def predict_proba(self, vectors) -> np.ndarray:
        """(N, K) float32 probabilities in the order of ``class_names``; rows sum to 1."""
        x = self._check_inputs(vectors)
        if len(x) == 0:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        with one_torch_thread(self.predicts_with_torch):
            proba = np.asarray(self._proba(x), dtype=np.float64)
        return (proba / proba.sum(axis=1, keepdims=True)).astype(np.float32)

    def predict(self, vectors, labels=None) -> Predictions:
        x = self._check_inputs(vectors)
        labels = np.arange(1, len(x) + 1) if labels is None else np.asarray(labels)
        if len(labels) != len(x):
            raise DinolocError(f"{len(x)} cell embeddings but {len(labels)} cell labels: give one label per embedded cell.")
        unfamiliar = self.familiarity.unfamiliar(x) if self.familiarity is not None else None
        return Predictions(labels=labels, class_names=self.class_names, probabilities=self.predict_proba(x),
                           unfamiliar=unfamiliar)

    def _check_inputs(self, vectors) -> np.ndarray:
        if self.input_dim is None:
            raise DinolocError(f"The {self.kind} head has not been trained yet: train it on annotated cells first.")
        x = as_vectors(vectors, allow_empty=True)
        if x.shape[1] != self.input_dim:
            raise DinolocError(
                f"This {self.kind} head was trained on {self.input_dim}-dimensional embeddings, but these cells have "
                f"{x.shape[1]} dimensions: embed them with the same backbone, channel strategy and embedding type "
                "as the training cells, or train a new head."
            )
        return x

    # -- state -------------------------------------------------------------------------------
    def to_state(self) -> tuple[dict[str, np.ndarray], dict]:
        if self.input_dim is None:
            raise DinolocError(f"The {self.kind} head has not been trained yet: train it before saving.")
        config = {"kind": self.kind, "class_names": list(self.class_names), "params": _jsonable(self.params), "input_dim": self.input_dim}
        tensors = dict(self._tensors())
        if self.familiarity is not None:
            config[FAMILIARITY_CONFIG] = self.familiarity.config()
            tensors[FAMILIARITY_TENSOR] = self.familiarity.reference
        return {k: np.ascontiguousarray(v) for k, v in tensors.items()}, config

    @classmethod
    def from_state(cls, tensors: Mapping[str, np.ndarray], config: Mapping) -> "Head":
        head = cls(class_names=config["class_names"], **config.get("params", {}))
        head.input_dim = int(config["input_dim"])
        missing = sorted(set(head._tensor_names()) - set(tensors))
        if missing:
            raise DinolocError(f"The saved {cls.kind} head lacks the tensor(s) {missing}: the model file is damaged; train and save the model again.")
        head._check_shapes({k: tuple(np.shape(tensors[k])) for k in head._tensor_names()})
        head._load_tensors({k: np.asarray(tensors[k]) for k in head._tensor_names()})
        head.familiarity = Familiarity.restore(tensors, config, head.input_dim)  # None: saved before it existed
        return head

    def _check_shapes(self, shapes: Mapping[str, tuple]) -> None:
        """Refuse tensors whose shapes disagree with the stored settings, before anything is built from them."""
        for name, want in self._expected_shapes().items():
            have = shapes[name]
            if len(have) != len(want) or any(w is not None and w != h for w, h in zip(want, have)):
                raise DinolocError(
                    f"The saved {self.kind} head's tensor {name} has shape {have}, but its settings "
                    f"({self.input_dim} inputs, {len(self.class_names)} classes) need "
                    f"{tuple('any' if w is None else w for w in want)}: the model file is damaged or crafted."
                )

    # -- for subclasses ------------------------------------------------------------------------
    def _check_params(self, params: dict) -> dict:
        return params

    def _train(self, x: np.ndarray, y: np.ndarray, progress, cancel) -> None:
        raise NotImplementedError

    def _proba(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _tensor_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _tensors(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _load_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _expected_shapes(self) -> dict[str, tuple]:
        """The shape of each saved tensor given input_dim and the classes (None: any length)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(classes={list(self.class_names)}, params={self.params})"


def _known_params(head: Head, params: dict) -> dict:
    unknown = sorted(set(params) - set(head.defaults))
    if unknown:
        raise DinolocError(f"The {head.kind} head has no setting(s) {unknown}: use {sorted(head.defaults)}.")
    return params


def _jsonable(params: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise DinolocError(message)
