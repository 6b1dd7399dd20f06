"""Classification heads on cell embeddings: kNN, logistic regression and the DINO4Cells MLP.

Every head maps (N, D) embeddings to (N, K) class probabilities. Heads are small: their state is a
few numpy arrays plus a JSON-able config, so a model bundle stores them without pickle.

Class order: the sorted class names, unless ``class_names=`` is passed, in which case that order is
kept (so colours and CSV columns stay stable across retraining). Every listed class needs cells.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional, Sequence

import numpy as np

from .errors import DinolocError
from .progress import CancelToken, ProgressCallback, check_cancel, report

MIN_CELLS_PER_CLASS = 2


# --------------------------------------------------------------------------------------------
# Predictions
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Predictions:
    """Per-cell class probabilities; row i belongs to the cell with label ``labels[i]``."""

    labels: np.ndarray
    class_names: tuple[str, ...]
    probabilities: np.ndarray

    def __post_init__(self) -> None:
        n_cells, n_classes = self.probabilities.shape
        if len(self.labels) != n_cells or len(self.class_names) != n_classes:
            raise ValueError("labels, class_names and probabilities do not agree in size")

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
        with one_torch_thread(self.trains_with_torch):
            self._train(np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64), progress, cancel)
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
        return Predictions(labels=labels, class_names=self.class_names, probabilities=self.predict_proba(x))

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
        return {k: np.ascontiguousarray(v) for k, v in self._tensors().items()}, config

    @classmethod
    def from_state(cls, tensors: Mapping[str, np.ndarray], config: Mapping) -> "Head":
        head = cls(class_names=config["class_names"], **config.get("params", {}))
        head.input_dim = int(config["input_dim"])
        missing = sorted(set(head._tensor_names()) - set(tensors))
        if missing:
            raise DinolocError(f"The saved {cls.kind} head lacks the tensor(s) {missing}: the model file is damaged; train and save the model again.")
        head._load_tensors({k: np.asarray(tensors[k]) for k in head._tensor_names()})
        return head

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


# --------------------------------------------------------------------------------------------
# kNN (DINO4Cells)
# --------------------------------------------------------------------------------------------
class KnnHead(Head):
    kind = "knn"
    description = "k nearest neighbours by cosine similarity, temperature-weighted votes; no training"
    paper = "Doron, Moutakanni et al., DINO4Cells (PLOS Comp Biol); Caron et al., DINO (ICCV 2021)"
    defaults = {"k": 20, "temperature": 0.07, "seed": 0}  # seed: every head takes one; kNN has no randomness
    trains_with_torch = predicts_with_torch = False
    _chunk = 2048  # query rows per similarity block, bounds memory to chunk x training cells

    def _check_params(self, params):
        params = {"k": int(params["k"]), "temperature": float(params["temperature"]), "seed": int(params["seed"])}
        _require(params["k"] >= 1, "kNN needs k of at least 1 neighbour.")
        _require(params["temperature"] > 0, "kNN needs a positive temperature (DINO uses 0.07).")
        return params

    def _train(self, x, y, progress, cancel):
        self._train_vectors = _l2_normalise(x)
        self._train_classes = y
        report(progress, 1, 1, f"kNN: stored {len(x)} training cells")

    def _proba(self, x):
        k = min(self.params["k"], len(self._train_vectors))  # the cap: few annotated cells
        return np.concatenate([self._vote(_l2_normalise(x[i:i + self._chunk]), k) for i in range(0, len(x), self._chunk)])

    def _vote(self, queries: np.ndarray, k: int) -> np.ndarray:
        similarity = queries @ self._train_vectors.T
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        sims = np.take_along_axis(similarity, nearest, axis=1).astype(np.float64)
        # exp(sim / T) normalised per row; subtracting the row maximum avoids overflow, same ratios.
        weights = np.exp((sims - sims.max(axis=1, keepdims=True)) / self.params["temperature"])
        votes = np.zeros((len(queries), len(self.class_names)))
        np.add.at(votes, (np.arange(len(queries))[:, None], self._train_classes[nearest]), weights)
        return votes

    def _tensor_names(self):
        return ("train_vectors", "train_classes")

    def _tensors(self):
        return {"train_vectors": self._train_vectors, "train_classes": self._train_classes}

    def _load_tensors(self, tensors):
        self._train_vectors = tensors["train_vectors"].astype(np.float32)
        self._train_classes = tensors["train_classes"].astype(np.int64)


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Logistic regression
# --------------------------------------------------------------------------------------------
class LogisticHead(Head):
    """Multinomial logistic regression on standardised features.

    Minimises sum_i w_i CE_i + ||W||^2 / (2C) (bias not penalised), w_i = class-balanced weights:
    the same optimum as scikit-learn's LogisticRegression(C=C, class_weight="balanced").
    Full-batch L-BFGS from zeros in float64: no randomness, so runs repeat exactly.
    """

    kind = "logistic"
    description = "multinomial logistic regression (linear probe) on standardised features, class-balanced, L2"
    paper = "Isselmann et al., SSL-pretrained models for protein localization (OpenCell, arXiv 2604.10970)"
    defaults = {"C": 1.0, "max_iter": 500, "balanced": True, "seed": 0}  # seed unused: L-BFGS from zeros is deterministic
    predicts_with_torch = False  # a loaded model predicts without importing torch

    def _check_params(self, params):
        params = {"C": float(params["C"]), "max_iter": int(params["max_iter"]),
                  "balanced": bool(params["balanced"]), "seed": int(params["seed"])}
        _require(params["C"] > 0, "Logistic regression needs a positive C (inverse regularisation strength, e.g. 1.0).")
        _require(params["max_iter"] >= 1, "Logistic regression needs max_iter of at least 1.")
        return params

    def _train(self, x, y, progress, cancel):
        import torch

        self._mean, self._scale = _standardise_fit(x)
        n_classes, max_iter = len(self.class_names), self.params["max_iter"]
        features = torch.from_numpy((x - self._mean) / self._scale).double()
        targets = torch.from_numpy(y)
        sample_weights = self._sample_weights(y, n_classes)
        weight = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, max_eval=2 * max_iter,
                                      tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20,
                                      line_search_fn="strong_wolfe")
        evaluations = [0]

        def closure():
            check_cancel(cancel)  # raising here aborts L-BFGS cleanly
            optimiser.zero_grad()
            ce = torch.nn.functional.cross_entropy(features @ weight.T + bias, targets, reduction="none")
            loss = (sample_weights * ce).sum() / len(y) + (weight ** 2).sum() / (2 * self.params["C"] * len(y))
            loss.backward()
            evaluations[0] += 1
            report(progress, min(evaluations[0], max_iter), max_iter, "training logistic regression")
            return loss

        optimiser.step(closure)
        report(progress, max_iter, max_iter, "training logistic regression")
        self._weight = weight.detach().numpy().astype(np.float32)
        self._bias = bias.detach().numpy().astype(np.float32)

    def _sample_weights(self, y, n_classes):
        import torch

        per_class = _class_weights(y, n_classes) if self.params["balanced"] else np.ones(n_classes)
        return torch.from_numpy(per_class[y])

    def _proba(self, x):
        logits = ((x - self._mean) / self._scale).astype(np.float64) @ self._weight.T.astype(np.float64) + self._bias
        return _softmax(logits)

    def _tensor_names(self):
        return ("scaler_mean", "scaler_scale", "weight", "bias")

    def _tensors(self):
        return {"scaler_mean": self._mean, "scaler_scale": self._scale, "weight": self._weight, "bias": self._bias}

    def _load_tensors(self, tensors):
        self._mean, self._scale = tensors["scaler_mean"], tensors["scaler_scale"]
        self._weight, self._bias = tensors["weight"], tensors["bias"]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------
# MLP (DINO4Cells head)
# --------------------------------------------------------------------------------------------
class MlpHead(Head):
    """StandardScaler -> Linear(D,512) ReLU Dropout(0.5) Linear(512,256) ReLU Dropout(0.5) Linear(256,K).

    Differences from DINO4Cells, on purpose:
    - single-label softmax cross-entropy (our annotations give one class per cell; the paper used
      multilabel BCE on HPA's multi-class labels);
    - lr 1e-3 for batch 128 instead of 1e-4 * batch / 256 (= 5e-5): the paper trained on tens of
      thousands of cells; with the hundreds a user annotates, an epoch is a handful of steps and the
      paper's rate would need thousands of epochs. 1e-3 for 100 epochs converges on a few hundred
      cells in seconds on one CPU thread. AdamW, weight decay 0.04 and the cosine schedule are the paper's;
    - class-balanced loss weights (user annotations are rarely balanced).
    Seeded: initial weights, shuffling and dropout come from ``seed``, so a CPU run repeats exactly.
    """

    kind = "mlp"
    description = "two-hidden-layer MLP (512, 256, dropout 0.5) on standardised features, AdamW + cosine schedule"
    paper = "Doron, Moutakanni et al., DINO4Cells (PLOS Comp Biol), classification head"
    defaults = {"hidden": (512, 256), "dropout": 0.5, "epochs": 100, "batch_size": 128, "lr": 1e-3,
                "weight_decay": 0.04, "balanced": True, "seed": 0}

    def _check_params(self, params):
        params = {"hidden": tuple(int(h) for h in params["hidden"]), "dropout": float(params["dropout"]),
                  "epochs": int(params["epochs"]), "batch_size": int(params["batch_size"]), "lr": float(params["lr"]),
                  "weight_decay": float(params["weight_decay"]), "balanced": bool(params["balanced"]),
                  "seed": int(params["seed"])}
        _require(all(h >= 1 for h in params["hidden"]), "MLP hidden layer sizes must be positive.")
        _require(0 <= params["dropout"] < 1, "MLP dropout must be between 0 and 1 (the paper uses 0.5).")
        _require(params["epochs"] >= 1 and params["batch_size"] >= 1, "MLP needs at least 1 epoch and a batch size of at least 1.")
        _require(params["lr"] > 0 and params["weight_decay"] >= 0, "MLP needs a positive learning rate and a non-negative weight decay.")
        return params

    def _build(self, dim: int, n_classes: int):
        import torch.nn as nn

        layers, width = [], dim
        for hidden in self.params["hidden"]:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(self.params["dropout"])]
            width = hidden
        layers.append(nn.Linear(width, n_classes))
        return nn.Sequential(*layers)

    def _train(self, x, y, progress, cancel):
        import torch

        self._mean, self._scale = _standardise_fit(x)
        features = torch.from_numpy((x - self._mean) / self._scale)
        targets = torch.from_numpy(y)
        with torch.random.fork_rng(devices=[]):  # seed locally; leave the caller's RNG untouched
            torch.manual_seed(self.params["seed"])
            self._net = self._build(x.shape[1], len(self.class_names))
            self._run_epochs(features, targets, progress, cancel)
        self._net.eval()

    def _run_epochs(self, features, targets, progress, cancel):
        import torch

        epochs, batch = self.params["epochs"], min(self.params["batch_size"], len(targets))
        steps_per_epoch = math.ceil(len(targets) / batch)
        optimiser = torch.optim.AdamW(self._net.parameters(), lr=self.params["lr"], weight_decay=self.params["weight_decay"])
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs * steps_per_epoch)
        class_weights = _class_weights(targets.numpy(), len(self.class_names)) if self.params["balanced"] else None
        loss_fn = torch.nn.CrossEntropyLoss(weight=None if class_weights is None else torch.from_numpy(class_weights).float())
        self._net.train()
        for epoch in range(epochs):
            check_cancel(cancel)
            for rows in torch.randperm(len(targets)).split(batch):
                optimiser.zero_grad()
                loss_fn(self._net(features[rows]), targets[rows]).backward()
                optimiser.step()
                schedule.step()
            report(progress, epoch + 1, epochs, "training MLP head")

    def _proba(self, x):
        import torch

        with torch.no_grad():
            logits = self._net(torch.from_numpy((x - self._mean) / self._scale)).double().numpy()
        return _softmax(logits)

    def _tensor_names(self):
        # nn.Sequential numbers Linear, ReLU, Dropout in turn: the Linear layers sit at 0, 3, 6, ...
        linears = range(0, 3 * len(self.params["hidden"]) + 1, 3)
        return ("scaler_mean", "scaler_scale") + tuple(f"net.{i}.{p}" for i in linears for p in ("weight", "bias"))

    def _tensors(self):
        net = {f"net.{k}": v.detach().numpy().copy() for k, v in self._net.state_dict().items()}
        return {"scaler_mean": self._mean, "scaler_scale": self._scale, **net}

    def _load_tensors(self, tensors):
        import torch

        self._mean, self._scale = tensors["scaler_mean"], tensors["scaler_scale"]
        with torch.random.fork_rng(devices=[]):  # building draws initial weights; keep the caller's RNG
            self._net = self._build(self.input_dim, len(self.class_names))
        try:
            self._net.load_state_dict({k[4:]: torch.from_numpy(np.array(v)) for k, v in tensors.items() if k.startswith("net.")})
        except RuntimeError as exc:
            raise DinolocError(f"The saved MLP head does not match its own settings ({exc}); the model file is damaged.") from exc
        self._net.eval()


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
HEADS: dict[str, type[Head]] = {head.kind: head for head in (KnnHead, LogisticHead, MlpHead)}


def _head_class(kind: str) -> type[Head]:
    try:
        return HEADS[kind]
    except KeyError:
        raise DinolocError(f"Unknown head {kind!r}: choose one of {', '.join(HEADS)}.") from None


def make_head(kind: str, class_names: Optional[Sequence[str]] = None, **params) -> Head:
    """An untrained head (checks its settings now, before any long work)."""
    return _head_class(kind)(class_names=class_names, **params)


def train_head(kind: str, vectors, classes: Sequence[str], progress: Optional[ProgressCallback] = None,
               cancel: Optional[CancelToken] = None, class_names: Optional[Sequence[str]] = None, **params) -> Head:
    """Train a head of ``kind`` on (N, D) embeddings and one class name per cell."""
    return make_head(kind, class_names, **params).fit(vectors, classes, progress, cancel)


def head_from_state(tensors: Mapping[str, np.ndarray], config: Mapping) -> Head:
    kind = config.get("kind")
    if kind not in HEADS:
        raise DinolocError(f"The saved head is of an unknown kind {kind!r}: it may come from a newer napari-dinoloc; update the plugin.")
    return HEADS[kind].from_state(tensors, config)
