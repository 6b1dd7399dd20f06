"""Fine-tuning the backbone on the cells the user annotated.

The OpenCell transfer paper (Isselmann et al., arXiv 2604.10970) reports macro-F1 0.822 for a frozen
DINO backbone + head and 0.860 after fine-tuning. Three levels:

- ``head``: frozen embeddings, only the head is trained (seconds);
- ``last-blocks``: the last N transformer blocks + the final norm + a linear classifier;
- ``full``: the whole backbone, with layer-wise learning-rate decay (each block below the top gets
  ``layer_decay`` times the rate of the one above, so early, generic features move least).

The trained model is the engine's own path: crops -> Cell-DINO augmentations (augment.py) ->
strategy views -> normalisation -> backbone tokens -> pooled embedding (cls / mean / cls+mean) ->
linear classifier, with class-balanced sampling. The classifier starts as the logistic probe fitted
on frozen embeddings of augmented training cells (linear probing, then fine-tuning: Kumar et al.,
ICLR 2022). Early stopping watches the validation macro-F1 of a logistic probe refitted each epoch
on the features that epoch's training steps produced: it scores the features the final head will
use, and epoch 0 (the frozen backbone) competes too, so the weights kept are never worse than the
frozen ones on the validation cells.

After training, the training cells are embedded again by the engine's ``Embedder`` with the
fine-tuned weights and a head from ``heads.py`` is fitted on them; the bundle stores that head and
the full fine-tuned state dict, so ``apply_finetuned`` + ``embed_cells`` + ``head.predict`` in a
later session reproduces the predictions. The backbone passed in is never modified: training runs
on a deep copy, so cancelling leaves the caller's model exactly as it was.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from .augment import AugmentSettings, augment_crops
from .embedding import EmbedSettings, Embedder, join_views, pool_tokens
from .errors import DinolocError
from .files import hash_array
from .heads import MIN_CELLS_PER_CLASS, Head, as_vectors, encode_classes, make_head
from .progress import CancelToken, ProgressCallback, check_cancel, report

LEVELS = ("head", "last-blocks", "full")
#: on_epoch(epoch, train_loss, val_f1): after every epoch, for a live plot.
EpochCallback = Callable[[int, float, float], None]
FINETUNED_HASH_PREFIX = "finetuned:"
WARMUP_EPOCHS = 1  # linear learning-rate warm-up: the first steps see the largest, least reliable gradients
CLIP_NORM = 1.0  # gradient-norm clip: the probe's confident logits can give huge first gradients


# ----------------------------------------------------------------------------------------------
# Settings and result
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FinetuneSettings:
    level: str = "last-blocks"      # one of LEVELS
    blocks: int = 2                 # "last-blocks": how many blocks from the top are trained
    epochs: int = 20                # at most; early stopping may end sooner
    lr: float = 1e-4                # learning rate of the (top of the) backbone
    head_lr: float = 1e-3           # learning rate of the classifier trained with it
    layer_decay: float = 0.75       # "full": rate factor per block below the top
    weight_decay: float = 0.05
    batch_size: int = 32            # cells per optimiser step
    max_batch: int = 32             # cells per forward pass; larger steps accumulate gradients
    val_fraction: float = 0.2       # stratified share of the annotated cells kept for validation
    patience: int = 5               # epochs without a better validation macro-F1 before stopping
    head_kind: str = "logistic"     # head fitted on the fine-tuned embeddings (heads.HEADS)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    seed: int = 0
    device: Optional[str] = None    # None: the backbone's device; "auto", "cpu", "cuda", "mps"

    def checked(self) -> "FinetuneSettings":
        _require(self.level in LEVELS, f"Unknown fine-tuning level {self.level!r}: choose one of {', '.join(LEVELS)}.")
        _require(self.blocks >= 1, f"Fine-tune at least 1 block (got {self.blocks}).")
        _require(self.epochs >= 1, f"Fine-tune for at least 1 epoch (got {self.epochs}).")
        _require(self.lr > 0 and self.head_lr > 0, "Learning rates must be positive (e.g. --lr 1e-4).")
        _require(0 < self.layer_decay <= 1, f"The layer-wise decay must lie in (0, 1] (got {self.layer_decay}).")
        _require(self.weight_decay >= 0, "The weight decay cannot be negative.")
        _require(self.batch_size >= 1 and self.max_batch >= 1, "Batch sizes must be at least 1.")
        _require(0 < self.val_fraction < 1, f"The validation share must lie in (0, 1) (got {self.val_fraction}).")
        _require(self.patience >= 1, f"The early-stopping patience must be at least 1 epoch (got {self.patience}).")
        make_head(self.head_kind)  # an unknown head fails now, not after training
        return self


@dataclass
class FinetuneResult:
    level: str
    backbone_state: Optional[dict[str, np.ndarray]]  # full state dict; None for level "head"
    weights_hash: str  # of the fine-tuned weights (the base weights for level "head")
    head: Head  # fitted on the fine-tuned embeddings of all annotated cells
    history: list[dict]  # per epoch: epoch, train_loss, val_f1, val_loss (of the probe), seconds, micro_batch
    metrics: dict  # validation scores (Evaluation.to_dict()) + best_epoch, stopped_early, cells...
    class_names: tuple[str, ...]
    class_counts: dict[str, int]
    stains: tuple[str, ...]
    embed_settings: EmbedSettings  # resolved: crop and input sizes filled in
    settings: FinetuneSettings
    validation: object = None  # evaluation.Evaluation on the validation cells (format_table() for a report)


@dataclass
class CellSet:
    """Crops of the annotated cells, ready to train on (only these stay in memory, not the images)."""

    crops: np.ndarray  # (N, C, S, S) float32, raw [0, 1], background masked as the engine does
    classes: np.ndarray  # (N,) class names
    stains: tuple[str, ...]
    origins: list[tuple[str, int]]  # (image name, cell label) of each crop
    not_found: int = 0  # annotated labels that are no cell of their label image (skipped)

    def __len__(self) -> int:
        return len(self.classes)

    def subset(self, rows) -> "CellSet":
        rows = np.asarray(rows)
        return CellSet(self.crops[rows], self.classes[rows], self.stains, [self.origins[i] for i in rows], self.not_found)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise DinolocError(message)


# ----------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------
def finetune(
    image_cells: Iterable[tuple[object, np.ndarray, Mapping[int, str]]],
    backbone,
    embed_settings: EmbedSettings = EmbedSettings(),
    settings: FinetuneSettings = FinetuneSettings(),
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    on_epoch: Optional[EpochCallback] = None,
) -> FinetuneResult:
    """Fine-tune ``backbone`` on the annotated cells of (CellImage, labels, {label: class}) triples.

    ``image_cells`` may be a generator: each image is cropped and dropped before the next is read.
    """
    settings = settings.checked()
    embed_settings = embed_settings.resolved(backbone)
    cells = collect_annotated_cells(image_cells, embed_settings, cancel)
    return finetune_cells(cells, backbone, embed_settings, settings, progress, cancel, on_epoch)


def finetune_cells(cells: CellSet, backbone, embed_settings: EmbedSettings, settings: FinetuneSettings,
                   progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                   on_epoch: Optional[EpochCallback] = None, class_names: Optional[Sequence[str]] = None,
                   min_cells: int = MIN_CELLS_PER_CLASS) -> FinetuneResult:
    """``finetune`` on crops already collected (cross-validation reuses them across folds, with the
    full class list and ``min_cells=1``: a fold may hold a single cell of a rare class)."""
    settings = settings.checked()
    embed_settings = embed_settings.resolved(backbone)
    class_names, y = check_annotations(cells, class_names, min_cells)
    train, val = stratified_split(y, settings.val_fraction, settings.seed)
    state, history, training_metrics = None, [], {}
    if settings.level == "head" and getattr(backbone, "base_weights_hash", None):
        state = _numpy_state(backbone.model)  # already fine-tuned: the bundle must carry these weights
    if settings.level != "head":
        trainer = Trainer(backbone, embed_settings, settings, cells, y, class_names)
        history, training_metrics = trainer.fit(train, val, progress, cancel, on_epoch)
        state = trainer.state_dict()
        del trainer  # the training copy of the model is no longer needed
    tuned = apply_finetuned(backbone, state)
    vectors = as_vectors(embed_cell_crops(tuned, embed_settings, cells, progress, cancel))
    validation = validate_head(vectors, y, class_names, train, val, settings)
    metrics = {**validation.to_dict(), "level": settings.level, "train_cells": int(len(train)),
               "val_cells": int(len(val)), "annotations_not_found": cells.not_found, **training_metrics}
    head = make_head(settings.head_kind, class_names, seed=settings.seed).fit_encoded(vectors, y, class_names)
    return FinetuneResult(
        level=settings.level, backbone_state=state,
        weights_hash=tuned.weights_hash, head=head, history=history, metrics=metrics, class_names=class_names,
        class_counts={name: int(np.sum(y == i)) for i, name in enumerate(class_names)},
        stains=cells.stains, embed_settings=embed_settings, settings=settings, validation=validation,
    )


def apply_finetuned(backbone, result_or_state):
    """A new LoadedBackbone with the fine-tuned weights; ``backbone`` itself is not changed.

    Its ``weights_hash`` is computed from the weights, so embedding caches never mix the two models.
    A level-"head" result (no backbone state) gives ``backbone`` back.
    """
    import torch

    state = getattr(result_or_state, "backbone_state", result_or_state)
    if state is None:
        return backbone
    model = copy.deepcopy(backbone.model)
    try:
        model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise DinolocError(f"The fine-tuned weights do not fit the backbone {backbone.name!r} ({first}): "
                           "load the backbone the model was fine-tuned from.") from exc
    model.eval().to(backbone.device)
    base = backbone.base_weights_hash or backbone.weights_hash
    return replace(backbone, model=model, weights_hash=state_hash(state), base_weights_hash=base)


def state_hash(state: Mapping[str, object]) -> str:
    """``finetuned:<sha256>`` over the tensors' names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(hash_array(_as_numpy(state[name])).encode())
    return FINETUNED_HASH_PREFIX + digest.hexdigest()


def finetune_bundle(result: FinetuneResult, backbone):
    """The model bundle of a fine-tuning result: the head, the fine-tuned weights and how they were made.

    ``weights_hash`` is the fine-tuned weights' hash (what ``apply_finetuned`` gives the loaded model);
    ``extra["finetune"]["base_weights_hash"]`` names the weights fine-tuning started from.
    """
    from .bundle import ModelBundle

    settings, embed = result.settings, result.embed_settings
    base_hash = getattr(backbone, "base_weights_hash", None) or backbone.weights_hash
    extra = {"finetune": {"level": result.level, "base_weights_hash": base_hash,
                          "settings": _jsonable_settings(settings), "history": result.history}}
    return ModelBundle(
        head=result.head, backbone_name=backbone.name, weights_hash=result.weights_hash, stains=result.stains,
        strategy=embed.strategy, embedding=embed.embedding, crop_size=embed.crop_size, input_size=embed.input_size,
        normalization=backbone.spec.normalization, mask_background=embed.mask_background,
        class_counts=dict(result.class_counts), metrics=dict(result.metrics), seed=settings.seed,
        backbone_state=result.backbone_state, extra=extra,
    )


def _jsonable_settings(settings: FinetuneSettings) -> dict:
    from dataclasses import asdict

    return asdict(settings)


# ----------------------------------------------------------------------------------------------
# Frozen backbone vs fine-tuned, cross-validated
# ----------------------------------------------------------------------------------------------
@dataclass
class FinetuneComparison:
    frozen: object  # evaluation.Evaluation of the frozen backbone + head
    finetuned: object  # evaluation.Evaluation of the fine-tuned backbone + head
    level: str
    seconds: dict[str, float]

    @property
    def gain(self) -> float:
        return self.finetuned.macro_f1 - self.frozen.macro_f1

    def to_dict(self) -> dict:
        return {"frozen": self.frozen.to_dict(), "finetuned": self.finetuned.to_dict(), "level": self.level,
                "macro_f1_gain": self.gain, "seconds": dict(self.seconds)}

    def format_table(self) -> str:
        rows = [("frozen + head", self.frozen), (f"fine-tuned ({self.level}) + head", self.finetuned)]
        lines = [f"{'model':<32} {'macro F1':>9} {'± folds':>8} {'accuracy':>9}"]
        for name, ev in rows:
            spread = float(np.std(ev.fold_macro_f1)) if ev.fold_macro_f1 else 0.0
            lines.append(f"{name:<32} {ev.macro_f1:>9.3f} {spread:>8.3f} {ev.accuracy:>9.3f}")
        return "\n".join(lines + [f"gain from fine-tuning: {self.gain:+.3f} macro F1"])


def compare_frozen_vs_finetuned(
    image_cells, backbone, embed_settings: EmbedSettings = EmbedSettings(),
    settings: FinetuneSettings = FinetuneSettings(), folds: int = 5, seed: int = 0,
    progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
):
    """Stratified k-fold cross-validation over the annotated cells of the frozen backbone + head
    against fine-tuning (``settings.level``, normally the last blocks) + head.

    Both use the same folds as ``evaluation.cross_validate`` with this seed, the same head kind
    (``settings.head_kind``) and the same crops. Fine-tuning in each fold sees only that fold's
    training cells (its early stopping splits them again): the held-out fold stays unseen.
    """
    from .evaluation import stratified_folds, usable_folds

    settings = settings.checked()
    embed_settings = embed_settings.resolved(backbone)
    cells = collect_annotated_cells(image_cells, embed_settings, cancel)
    class_names, y = check_annotations(cells)
    n_folds, notes = usable_folds(folds, class_names, y)
    splits = stratified_folds(y, n_folds, seed)
    began = time.perf_counter()
    frozen = _frozen_out_of_fold(cells, backbone, embed_settings, settings, class_names, y, splits, progress, cancel)
    frozen_seconds, began = time.perf_counter() - began, time.perf_counter()
    tuned = np.empty(len(y), dtype=np.int64)
    for fold, (train, test) in enumerate(splits):
        fold_progress = _fold_progress(progress, fold, len(splits))
        result = finetune_cells(cells.subset(train), backbone, embed_settings, settings, fold_progress, cancel,
                                class_names=class_names, min_cells=1)
        vectors = embed_cell_crops(apply_finetuned(backbone, result), embed_settings, cells.subset(test), cancel=cancel)
        tuned[test] = _class_index(result.head.predict_proba(vectors), result.class_names, class_names)
    seconds = {"frozen": frozen_seconds, "finetuned": time.perf_counter() - began}
    return FinetuneComparison(_out_of_fold_evaluation(class_names, y, frozen, splits, notes),
                              _out_of_fold_evaluation(class_names, y, tuned, splits, notes), settings.level, seconds)


def _frozen_out_of_fold(cells, backbone, embed_settings, settings, class_names, y, splits, progress, cancel) -> np.ndarray:
    vectors = embed_cell_crops(backbone, embed_settings, cells, progress, cancel)
    predicted = np.empty(len(y), dtype=np.int64)
    for train, test in splits:
        check_cancel(cancel)
        head = make_head(settings.head_kind, class_names, seed=settings.seed).fit_encoded(vectors[train], y[train], class_names)
        predicted[test] = head.predict_proba(vectors[test]).argmax(axis=1)
    return predicted


def _class_index(probabilities: np.ndarray, head_names: Sequence[str], class_names: Sequence[str]) -> np.ndarray:
    """Predicted index into ``class_names`` (a fold's head lists the same classes, maybe in its own order)."""
    position = {name: i for i, name in enumerate(class_names)}
    return np.array([position[head_names[i]] for i in probabilities.argmax(axis=1)], dtype=np.int64)


def _out_of_fold_evaluation(class_names, y, predicted, splits, notes):
    from .evaluation import confusion_matrix, evaluation_from_confusion

    fold_f1 = tuple(macro_f1(y[test], predicted[test], len(class_names)) for _, test in splits)
    return evaluation_from_confusion(class_names, confusion_matrix(y, predicted, len(class_names)), folds=len(splits),
                                     notes=notes, fold_macro_f1=fold_f1, out_of_fold=predicted)


def _fold_progress(progress, fold: int, folds: int):
    if progress is None:
        return None
    return lambda done, total, what: progress(done, total, f"Fold {fold + 1} of {folds}: {what}")


# ----------------------------------------------------------------------------------------------
# Collecting and checking the annotated cells
# ----------------------------------------------------------------------------------------------
def collect_annotated_cells(image_cells, embed_settings: EmbedSettings, cancel: Optional[CancelToken] = None) -> CellSet:
    """Crops (as the engine makes them) of every annotated cell that exists in its label image."""
    crops, classes, origins, stains, not_found = [], [], [], None, 0
    for image, labels, cell_classes in image_cells:
        check_cancel(cancel)
        stains = stains or tuple(image.stains)
        order = _channel_order(image.stains, stains, image.name)
        wanted = {int(label): str(name).strip() for label, name in cell_classes.items() if name and str(name).strip()}
        found = 0
        for label, crop in _crops_of(image, labels, wanted, embed_settings):
            crops.append(crop[order])
            classes.append(wanted[label])
            origins.append((image.name, label))
            found += 1
        not_found += len(wanted) - found
    if not crops:
        raise DinolocError("No annotated cells: give at least two classes a few annotated cells each "
                           "(their labels must be cells of the label image), then fine-tune.")
    return CellSet(np.stack(crops), np.asarray(classes, dtype=object), stains, origins, not_found)


def _crops_of(image, labels, wanted: Mapping[int, str], embed_settings: EmbedSettings):
    """(label, crop) of the cells in ``wanted`` that exist in ``labels``, cropped as ``embed_cells`` crops them."""
    from .crops import iter_cell_crops
    from .segmentation import CellTable

    table = CellTable.from_labels(labels)
    rows = np.flatnonzero(np.isin(table.label, list(wanted)))
    if len(rows) == 0:
        return
    batches = iter_cell_crops(image, labels, _table_rows(table, rows), embed_settings.crop_size,
                              embed_settings.mask_background, embed_settings.batch_size)
    for ids, batch in batches:
        for label, crop in zip(ids, batch):
            yield int(label), crop


def _table_rows(table, rows):
    from .segmentation import CellTable

    return CellTable(label=table.label[rows], centroid_y=table.centroid_y[rows], centroid_x=table.centroid_x[rows],
                     area=table.area[rows], bbox=table.bbox[rows])


def _channel_order(stains: Sequence[str], reference: tuple[str, ...], name: str) -> list[int]:
    """Channel indices that put an image's channels in the first image's stain order."""
    stains = tuple(stains)
    if stains == reference:
        return list(range(len(stains)))
    if sorted(stains) != sorted(reference):
        raise DinolocError(f"The image {name} has the stains {list(stains)} but the first image has {list(reference)}: "
                           "fine-tune on images with the same stains.")
    unused = list(range(len(stains)))  # 'other' may appear more than once: match those in order
    order = []
    for stain in reference:
        order.append(next(i for i in unused if stains[i] == stain))
        unused.remove(order[-1])
    return order


def check_annotations(cells: CellSet, class_names: Optional[Sequence[str]] = None,
                      min_cells: int = MIN_CELLS_PER_CLASS) -> tuple[tuple[str, ...], np.ndarray]:
    """Class order and index per cell; a DinolocError for one class or a class with too few cells."""
    return encode_classes(list(cells.classes), len(cells.classes), class_names, min_cells)


def stratified_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows): about ``val_fraction`` of each class, at least 1, never all of it."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        n_val = min(max(1, int(round(val_fraction * len(rows)))), len(rows) - 1)
        val.append(rows[:n_val])
        train.append(rows[n_val:])
    val = np.sort(np.concatenate(val))
    if len(val) == 0:
        raise DinolocError("Too few annotated cells to keep some for validation: annotate at least 2 cells of a class.")
    return np.sort(np.concatenate(train)), val


# ----------------------------------------------------------------------------------------------
# Embedding crops with the engine, and scoring
# ----------------------------------------------------------------------------------------------
def embed_cell_crops(backbone, embed_settings: EmbedSettings, cells: CellSet, progress=None, cancel=None) -> np.ndarray:
    """(N, D) embeddings of the collected crops, by the engine's Embedder (as ``embed_cells`` makes them)."""
    embedder = Embedder(backbone, embed_settings)
    step = embedder.settings.batch_size
    parts = []
    for start in range(0, len(cells), step):
        check_cancel(cancel)
        parts.append(embedder.embed_batch(cells.crops[start:start + step], cells.stains))
        report(progress, min(start + step, len(cells)), len(cells), "Embedding the annotated cells")
    return np.concatenate(parts)


def validate_head(vectors, y, class_names, train, val, settings: FinetuneSettings):
    """Evaluation on the held-out validation cells of a head fitted on the training cells only."""
    from .evaluation import confusion_matrix, evaluation_from_confusion

    head = make_head(settings.head_kind, class_names, seed=settings.seed).fit_encoded(vectors[train], y[train], class_names)
    predicted = head.predict_proba(vectors[val]).argmax(axis=1)
    return evaluation_from_confusion(class_names, confusion_matrix(y[val], predicted, len(class_names)))


def macro_f1(true_index: np.ndarray, predicted_index: np.ndarray, n_classes: int) -> float:
    from .evaluation import confusion_matrix, f1_from_confusion

    return float(f1_from_confusion(confusion_matrix(true_index, predicted_index, n_classes)).mean())


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
class Trainer:
    """One fine-tuning run: a deep copy of the backbone, a classifier, an optimiser, a seeded generator."""

    def __init__(self, backbone, embed_settings: EmbedSettings, settings: FinetuneSettings, cells: CellSet,
                 y: np.ndarray, class_names: Sequence[str]):
        self.settings, self.cells, self.y, self.class_names = settings, cells, y, tuple(class_names)
        self.device = _training_device(backbone, settings.device)
        model = copy.deepcopy(backbone.model).to(self.device)  # never train the caller's model
        self.backbone = replace(backbone, model=model, device=self.device)
        # fp32 while training: validation scores must not depend on an autocast decision
        self.embedder = Embedder(self.backbone, replace(embed_settings, precision="fp32"))
        self.trainable = set_trainable(model, settings.level, settings.blocks)
        self.micro_batch = settings.max_batch
        self.classifier = None  # torch.nn.Linear on standardised features, made by init_classifier
        self.feature_mean = self.feature_scale = None
        self.frozen_features = None  # (features, classes) of the training cells before any training
        self.optimiser = self.schedule = None

    # -- the model ------------------------------------------------------------------------------
    def features(self, crops: np.ndarray):
        """(B, D) pooled embeddings with gradients: the same preparation and pooling as the Embedder."""
        prepared = self.embedder.prepare(crops, self.cells.stains)
        tokens = self.backbone.tokens(prepared.inputs.to(self.device))
        pooled = pool_tokens(tokens, self.embedder.settings.embedding, self.backbone.num_prefix_tokens)
        return join_views(pooled, prepared)

    def classify(self, features):
        return self.classifier((features - self.feature_mean) / self.feature_scale)

    def init_classifier(self, train: np.ndarray, generator, cancel=None) -> None:
        """A linear layer started from the logistic probe on frozen embeddings of augmented training cells.

        Augmented, as the training batches are: a probe fitted on clean crops is over-confident on
        augmented ones, and its huge first losses would wreck the features. These features are also
        epoch 0 of the early-stopping probe, so every epoch is scored the same way."""
        import torch

        frozen = self.embed(train, cancel, generator)
        self.frozen_features = (frozen, self.y[train])
        tensors, _ = self.fit_probe(frozen, self.y[train]).to_state()
        self.classifier = torch.nn.Linear(frozen.shape[1], len(self.class_names))
        with torch.no_grad():
            self.classifier.weight.copy_(torch.from_numpy(tensors["weight"]))
            self.classifier.bias.copy_(torch.from_numpy(tensors["bias"]))
        self.classifier.to(self.device)
        # the probe's standardisation stays fixed: it keeps the linear layer well conditioned
        self.feature_mean = torch.from_numpy(tensors["scaler_mean"]).to(self.device)
        self.feature_scale = torch.from_numpy(tensors["scaler_scale"]).to(self.device)

    def fit_probe(self, features: np.ndarray, y: np.ndarray):
        return make_head("logistic", self.class_names, seed=self.settings.seed).fit_encoded(features, y, self.class_names)

    def embed(self, rows: np.ndarray, cancel=None, generator=None) -> np.ndarray:
        """Embeddings of the given cells in eval mode, ``micro_batch`` at a time; augmented if a generator is given."""
        import torch

        self.backbone.model.eval()
        parts = []
        for start in range(0, len(rows), self.micro_batch):
            check_cancel(cancel)
            crops = self.cells.crops[rows[start:start + self.micro_batch]]
            if generator is not None:
                crops = augment_crops(torch.from_numpy(crops), self.cells.stains, self.settings.augment, generator).numpy()
            parts.append(self.embedder.embed_batch(crops, self.cells.stains))
        return np.concatenate(parts)

    # -- optimisation ---------------------------------------------------------------------------
    def build_optimiser(self, steps_per_epoch: int) -> None:
        import torch

        groups = parameter_groups(self.backbone.model, self.trainable, self.settings)
        groups += [{"params": list(self.classifier.parameters()), "lr": self.settings.head_lr, "weight_decay": 0.0}]
        self.optimiser = torch.optim.AdamW(groups, lr=self.settings.lr, weight_decay=self.settings.weight_decay)
        schedule = warmup_cosine(WARMUP_EPOCHS * steps_per_epoch, self.settings.epochs * steps_per_epoch)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimiser, schedule)

    def accumulate(self, crops: np.ndarray, targets) -> tuple[float, np.ndarray]:
        """Gradients of the mean loss over ``crops``, summed over micro-batches of ``micro_batch`` cells.
        Returns the loss and the cells' features (for the validation probe)."""
        import torch.nn.functional as F

        for parameter in self._parameters():
            parameter.grad = None
        total, features = 0.0, []
        for start in range(0, len(crops), self.micro_batch):
            part = slice(start, start + self.micro_batch)
            pooled = self.features(crops[part])
            loss = F.cross_entropy(self.classify(pooled), targets[part], reduction="sum") / len(crops)
            loss.backward()
            total += float(loss.detach())
            features.append(pooled.detach().float().cpu().numpy())
        return total, np.concatenate(features)

    def step(self, crops: np.ndarray, targets) -> tuple[float, np.ndarray]:
        """One optimiser step; on out-of-memory the micro-batch is halved and the step retried."""
        import torch

        while True:
            try:
                loss, features = self.accumulate(crops, targets)
                break
            except RuntimeError as exc:
                if not is_out_of_memory(exc):
                    raise
                self._shrink_micro_batch(exc)
        torch.nn.utils.clip_grad_norm_(self._parameters(), CLIP_NORM)
        self.optimiser.step()
        self.schedule.step()
        return loss, features

    def _shrink_micro_batch(self, exc: BaseException) -> None:
        if self.micro_batch <= 1:
            raise DinolocError("Out of memory even with one cell per pass: fine-tune fewer blocks, use a smaller "
                               "input size, or run on the CPU (--device cpu).") from exc
        self.micro_batch = max(1, self.micro_batch // 2)
        _free_device_memory(self.device)

    def _parameters(self):
        return [p for p in self.trainable] + list(self.classifier.parameters())

    # -- epochs ---------------------------------------------------------------------------------
    def fit(self, train, val, progress=None, cancel=None, on_epoch=None) -> tuple[list[dict], dict]:
        """Train with early stopping on validation macro-F1; the best epoch's weights are kept
        (epoch 0, the untouched backbone, included: fine-tuning never ends worse on validation)."""
        import torch

        with seeded(self.settings.seed, self.device):
            generator = torch.Generator().manual_seed(self.settings.seed)
            self.init_classifier(train, generator, cancel)
            self.build_optimiser(math.ceil(len(train) / self.settings.batch_size))
            start = self.validate(val, *self.frozen_features)
            best = EarlyStopping(self.settings.patience, start["val_f1"], start["val_loss"], self.snapshot())
            history = []
            for epoch in range(1, self.settings.epochs + 1):
                record = self.run_epoch(epoch, train, val, generator, progress, cancel)
                history.append(record)
                if on_epoch is not None:
                    on_epoch(epoch, record["train_loss"], record["val_f1"])
                if best.update(epoch, record["val_f1"], record["val_loss"], self.snapshot):
                    break
            self.restore(best.snapshot)
        self.backbone.model.eval()
        return history, {"initial_val_f1": best.initial_f1, "best_val_f1": best.f1, "best_epoch": best.epoch,
                         "epochs_run": len(history), "stopped_early": len(history) < self.settings.epochs,
                         "micro_batch": self.micro_batch}

    def run_epoch(self, epoch, train, val, generator, progress=None, cancel=None) -> dict:
        import torch

        began = time.perf_counter()
        self.backbone.model.train()
        self.classifier.train()
        order = balanced_order(self.y[train], generator)
        batches = [train[order[i:i + self.settings.batch_size]] for i in range(0, len(order), self.settings.batch_size)]
        losses, features = [], []
        for number, rows in enumerate(batches, start=1):
            check_cancel(cancel)
            crops = augment_crops(torch.from_numpy(self.cells.crops[rows]), self.cells.stains, self.settings.augment, generator)
            loss, batch_features = self.step(crops.numpy(), torch.from_numpy(self.y[rows]).to(self.device))
            losses.append(loss * len(rows))
            features.append(batch_features)
            report(progress, (epoch - 1) * len(batches) + number, self.settings.epochs * len(batches),
                   f"Fine-tuning: epoch {epoch} of {self.settings.epochs}")
        if not all(np.isfinite(losses)):
            raise DinolocError("Fine-tuning diverged (the loss is not a number): lower the learning rate (--lr, --head-lr).")
        scores = self.validate(val, np.concatenate(features), self.y[np.concatenate(batches)])
        return {"epoch": epoch, "train_loss": float(sum(losses) / len(order)), **scores,
                "seconds": time.perf_counter() - began, "micro_batch": self.micro_batch}

    def validate(self, val: np.ndarray, train_features: np.ndarray, train_y: np.ndarray) -> dict:
        """Macro-F1 and log-loss on the validation cells of a logistic probe fitted on
        this epoch's training features. It scores the features the final head will see, not the jointly
        trained classifier, which lags behind while the features move."""
        probe = self.fit_probe(train_features, train_y)
        proba = probe.predict_proba(self.embed(val)).astype(np.float64)
        truth = self.y[val]
        loss = float(-np.mean(np.log(np.maximum(proba[np.arange(len(truth)), truth], 1e-12))))
        return {"val_f1": macro_f1(truth, proba.argmax(axis=1), len(self.class_names)), "val_loss": loss}

    def snapshot(self) -> dict:
        return {"trainable": [p.detach().clone() for p in self.trainable],
                "classifier": {k: v.detach().clone() for k, v in self.classifier.state_dict().items()}}

    def restore(self, snapshot: dict) -> None:
        import torch

        with torch.no_grad():
            for parameter, saved in zip(self.trainable, snapshot["trainable"]):
                parameter.copy_(saved)
        self.classifier.load_state_dict(snapshot["classifier"])

    def state_dict(self) -> dict[str, np.ndarray]:
        return _numpy_state(self.backbone.model)


class EarlyStopping:
    """The best epoch so far by validation macro-F1 (ties: the lower validation loss)."""

    def __init__(self, patience: int, f1: float, loss: float, snapshot: dict):
        self.patience, self.f1, self.loss, self.snapshot = patience, f1, loss, snapshot
        self.initial_f1, self.epoch = f1, 0

    def update(self, epoch: int, f1: float, loss: float, take_snapshot) -> bool:
        """Record an epoch; True when training should stop."""
        if (f1, -loss) > (self.f1, -self.loss):
            self.f1, self.loss, self.epoch, self.snapshot = f1, loss, epoch, take_snapshot()
        return epoch - self.epoch >= self.patience


def set_trainable(model, level: str, blocks: int) -> list:
    """Freeze the model, then unfreeze what ``level`` trains; returns the trainable parameters."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if level == "full":
        modules = [model]
    else:
        depth = len(model.blocks)
        if blocks > depth:
            raise DinolocError(f"The backbone has {depth} blocks; fine-tune at most {depth} (got --blocks {blocks}), or use level 'full'.")
        modules = list(model.blocks[depth - blocks:]) + _final_norms(model)
    trainable = []
    for module in modules:
        for parameter in module.parameters():
            parameter.requires_grad_(True)
            trainable.append(parameter)
    return trainable


def _final_norms(model) -> list:
    import torch

    return [m for m in (getattr(model, "norm", None), getattr(model, "fc_norm", None))
            if isinstance(m, torch.nn.Module) and any(True for _ in m.parameters())]


def parameter_groups(model, trainable: list, settings: FinetuneSettings) -> list[dict]:
    """AdamW groups: layer-wise decayed rates (``full``), no weight decay on biases, norms and tokens."""
    ids = {id(p) for p in trainable}
    depth = len(model.blocks)
    groups: dict[tuple[float, float], list] = {}
    for name, parameter in model.named_parameters():
        if id(parameter) not in ids:
            continue
        scale = settings.layer_decay ** (depth + 1 - layer_index(name, depth)) if settings.level == "full" else 1.0
        decay = 0.0 if parameter.ndim <= 1 or name in ("cls_token", "pos_embed", "reg_token") else settings.weight_decay
        groups.setdefault((settings.lr * scale, decay), []).append(parameter)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]


def layer_index(name: str, depth: int) -> int:
    """0 for the patch embedding and tokens, i + 1 for block i, depth + 1 for the final norms."""
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name.startswith(("patch_embed", "cls_token", "pos_embed", "reg_token")):
        return 0
    return depth + 1


def warmup_cosine(warmup_steps: int, total_steps: int):
    """Learning-rate factor per step: linear warm-up, then cosine decay to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def balanced_order(y: np.ndarray, generator) -> np.ndarray:
    """An epoch of len(y) cell indices drawn with replacement, every class equally likely."""
    import torch

    counts = np.bincount(y)
    weights = torch.from_numpy(1.0 / counts[y])
    return torch.multinomial(weights, len(y), replacement=True, generator=generator).numpy()


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------
def _training_device(backbone, device: Optional[str]):
    if device is None:
        return backbone.device
    from .devices import resolve_device

    return resolve_device(device)


@contextmanager
def seeded(seed: int, device):
    """Seed torch for this run (restoring the caller's random state afterwards); deterministic kernels
    where torch has them (warn-only, so a missing one never stops a run)."""
    import torch

    devices = [device.index or 0] if device.type == "cuda" else []
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def _free_device_memory(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def _numpy_state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().to("cpu").numpy().copy() for k, v in model.state_dict().items()}


def _as_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().to("cpu").numpy()
    return np.asarray(value)
