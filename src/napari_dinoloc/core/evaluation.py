"""How good is a head? Cross-validated macro-F1, per-class F1, confusion matrix, low-shot curves.

Macro-F1 (the mean of the per-class F1 scores) is the metric of DINO4Cells and of the OpenCell
transfer paper; low-shot curves (macro-F1 against the fraction of labelled training cells) follow
the OpenCell paper. Plots are drawn with matplotlib's Agg canvas (no pyplot, no GUI) so they can be
made from worker threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from .errors import DinolocError
from .files import atomic_write
from .heads import as_vectors, encode_classes, make_head
from .progress import CancelToken, ProgressCallback, check_cancel, report


@dataclass(frozen=True, eq=False)
class Evaluation:
    class_names: tuple[str, ...]
    macro_f1: float
    per_class_f1: dict[str, float]
    confusion: np.ndarray  # (K, K) cell counts, rows = true class, columns = predicted class
    n_cells: int
    folds: int  # 0 when the predictions did not come from cross-validation
    notes: tuple[str, ...] = ()
    fold_macro_f1: tuple[float, ...] = ()  # macro-F1 of each held-out fold (for mean +- std)
    out_of_fold: Optional[np.ndarray] = field(default=None, repr=False)  # (N,) predicted class index per input cell

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(self.confusion.sum(), 1))

    @property
    def cells_per_class(self) -> dict[str, int]:
        return {name: int(n) for name, n in zip(self.class_names, self.confusion.sum(axis=1))}

    def to_dict(self) -> dict:
        """JSON-able (for a model bundle's metrics or a report file)."""
        return {
            "class_names": list(self.class_names),
            "macro_f1": self.macro_f1,
            "macro_f1_fold_std": float(np.std(self.fold_macro_f1)) if self.fold_macro_f1 else None,
            "fold_macro_f1": list(self.fold_macro_f1),
            "accuracy": self.accuracy,
            "per_class_f1": dict(self.per_class_f1),
            "cells_per_class": self.cells_per_class,
            "confusion": self.confusion.astype(int).tolist(),
            "n_cells": self.n_cells,
            "folds": self.folds,
            "notes": list(self.notes),
        }

    def format_table(self) -> str:
        """A plain-text report for the command line."""
        return "\n".join([self._headline(), "", *self._f1_lines(), "", *self._confusion_lines(), *self.notes])

    def _headline(self) -> str:
        how = f"{self.folds}-fold cross-validated" if self.folds else "evaluated"
        spread = f" +- {np.std(self.fold_macro_f1):.3f} across folds" if self.fold_macro_f1 else ""
        return f"Macro F1 ({how}, {self.n_cells} cells): {self.macro_f1:.3f}{spread}; accuracy {self.accuracy:.3f}"

    def _f1_lines(self) -> list[str]:
        width = max(len("class"), *(len(n) for n in self.class_names))
        counts = self.cells_per_class
        lines = [f"{'#':>3}  {'class':<{width}}  {'F1':>5}  {'cells':>6}"]
        for i, name in enumerate(self.class_names):
            lines.append(f"{i:>3}  {name:<{width}}  {self.per_class_f1[name]:>5.3f}  {counts[name]:>6d}")
        return lines

    def _confusion_lines(self) -> list[str]:
        # Columns are numbered like the F1 table rows so that long class names keep the matrix narrow.
        cell = max(4, len(str(int(self.confusion.max(initial=0)))) + 1)
        header = "true \\ predicted " + "".join(f"{j:>{cell}}" for j in range(len(self.class_names)))
        rows = [f"{i:>16} " + "".join(f"{int(v):>{cell}}" for v in row) for i, row in enumerate(self.confusion)]
        return ["Confusion matrix (rows: true class #, columns: predicted class #)", header, *rows]


# --------------------------------------------------------------------------------------------
# Scores from predictions
# --------------------------------------------------------------------------------------------
def confusion_matrix(true_index: np.ndarray, predicted_index: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (true_index, predicted_index), 1)
    return counts


def f1_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Per-class F1 = 2TP / (2TP + FP + FN); 0 for a class that is neither present nor predicted."""
    true_positive = np.diag(confusion).astype(np.float64)
    denominator = confusion.sum(axis=0) + confusion.sum(axis=1)  # = 2TP + FP + FN
    return np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)


def macro_f1(true_index: np.ndarray, predicted_index: np.ndarray, n_classes: int) -> float:
    """Mean per-class F1 of class indices."""
    return float(f1_from_confusion(confusion_matrix(true_index, predicted_index, n_classes)).mean())


def evaluation_from_confusion(class_names: Sequence[str], confusion: np.ndarray, folds: int = 0,
                              notes: Sequence[str] = (), **extra) -> Evaluation:
    f1 = f1_from_confusion(confusion)
    absent = [n for n, count in zip(class_names, confusion.sum(axis=1)) if count == 0]
    if absent:
        notes = (*notes, f"Class(es) {absent} have no true cells; their F1 counts as 0 in the macro F1.")
    return Evaluation(
        class_names=tuple(class_names), macro_f1=float(f1.mean()),
        per_class_f1={n: float(v) for n, v in zip(class_names, f1)}, confusion=confusion,
        n_cells=int(confusion.sum()), folds=folds, notes=tuple(notes), **extra,
    )


def evaluate_predictions(true_classes: Sequence[str], predicted_classes: Sequence[str],
                         class_names: Sequence[str]) -> Evaluation:
    """Score predicted class names against true ones (e.g. a saved model on newly annotated cells)."""
    class_names = tuple(str(c) for c in class_names)
    if len(true_classes) != len(predicted_classes):
        raise DinolocError(f"{len(true_classes)} true classes but {len(predicted_classes)} predictions: give one of each per cell.")
    true_index = _index_of(true_classes, class_names, "annotated")
    predicted_index = _index_of(predicted_classes, class_names, "predicted")
    return evaluation_from_confusion(class_names, confusion_matrix(true_index, predicted_index, len(class_names)))


def _index_of(names: Sequence[str], class_names: tuple[str, ...], what: str) -> np.ndarray:
    index = {n: i for i, n in enumerate(class_names)}
    unknown = sorted({str(n) for n in names} - set(index))
    if unknown:
        raise DinolocError(f"Cells are {what} as {unknown}, which the model does not know ({list(class_names)}): "
                           "use the model's class names.")
    return np.array([index[str(n)] for n in names], dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Cross-validation
# --------------------------------------------------------------------------------------------
def stratified_folds(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y))


def usable_folds(folds: int, class_names: tuple[str, ...], y: np.ndarray) -> tuple[int, list[str]]:
    """(folds to use, notes): every held-out fold needs a cell of every class, so folds <= the smallest class size."""
    if int(folds) < 2:
        raise DinolocError(f"Cross-validation needs at least 2 folds, not {folds}.")
    counts = np.bincount(y, minlength=len(class_names))
    smallest = int(np.argmin(counts))
    if counts[smallest] >= folds:
        return int(folds), []
    note = (f"Folds reduced from {folds} to {counts[smallest]} because class {class_names[smallest]!r} has only "
            f"{counts[smallest]} cells; annotate more cells of it for a steadier estimate.")
    return int(counts[smallest]), [note]




def _prepare(vectors, classes, folds: int, seed: int, class_names, groups=None):
    x = as_vectors(vectors)
    names, y = encode_classes(classes, len(x), class_names)
    folds, notes = usable_folds(folds, names, y)
    if groups is not None and len(set(groups)) >= max(2, folds):
        notes = [*notes, f"folds split by image ({len(set(groups))} images): no image has cells in both training and test"]
        return x, names, y, grouped_folds(y, np.asarray(groups), folds, seed), notes
    return x, names, y, stratified_folds(y, folds, seed), notes


def grouped_folds(y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds that keep every image's cells together (image-level labels would otherwise leak)."""
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(train, test) for train, test in splitter.split(np.zeros(len(y)), y, groups)]


def _step_progress(progress: Optional[ProgressCallback], step: int, n_steps: int, what: str):
    """Map a head's own (done, total) onto the overall job, 1000 ticks per step."""
    if progress is None:
        return None
    return lambda done, total, _what: progress(step * 1000 + int(1000 * done / max(total, 1)), n_steps * 1000, what)


def cross_validate(kind: str, vectors, classes: Sequence[str], folds: int = 5, seed: int = 0,
                   progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                   class_names: Optional[Sequence[str]] = None, groups: Optional[Sequence] = None,
                   **head_params) -> Evaluation:
    """Stratified k-fold cross-validation of a head; scores pool the out-of-fold predictions of all cells.

    ``seed`` draws the folds and, unless ``head_params`` has its own, seeds the head. ``groups`` (the
    image of each cell): with as many images as folds, the folds keep each image's cells together."""
    head_params.setdefault("seed", seed)
    make_head(kind, class_names, **head_params)  # bad settings fail before any work
    x, names, y, splits, notes = _prepare(vectors, classes, folds, seed, class_names, groups)
    predicted = np.empty(len(y), dtype=np.int64)
    fold_f1 = []
    for fold, (train, test) in enumerate(splits):
        check_cancel(cancel)
        what = f"cross-validation: fold {fold + 1} of {len(splits)}"
        head = make_head(kind, names, **head_params).fit_encoded(
            x[train], y[train], names, _step_progress(progress, fold, len(splits), what), cancel)
        predicted[test] = head.predict_proba(x[test]).argmax(axis=1)
        fold_f1.append(float(f1_from_confusion(confusion_matrix(y[test], predicted[test], len(names))).mean()))
        report(progress, (fold + 1) * 1000, len(splits) * 1000, what)
    confusion = confusion_matrix(y, predicted, len(names))
    return evaluation_from_confusion(names, confusion, folds=len(splits), notes=notes,
                                     fold_macro_f1=tuple(fold_f1), out_of_fold=predicted)


# --------------------------------------------------------------------------------------------
# Low-shot curves
# --------------------------------------------------------------------------------------------
def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    fractions = tuple(float(f) for f in fractions)
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise DinolocError(f"Low-shot fractions must lie in (0, 1], e.g. 0.1 for 10% of the training cells; got {list(fractions)}.")
    return tuple(sorted(set(fractions)))


def nested_subsets(y_train: np.ndarray, fractions: tuple[float, ...], rng: np.random.Generator) -> list[np.ndarray]:
    """Per fraction, the first round(f * n) (at least 1) cells of one shuffled order per class: smaller training sets
    are subsets of larger ones, so the curve shows the effect of more labels, not of a new draw."""
    orders = [rng.permutation(np.flatnonzero(y_train == c)) for c in np.unique(y_train)]
    return [np.sort(np.concatenate([order[:max(1, int(round(f * len(order))))] for order in orders])) for f in fractions]


def low_shot_curve(kind: str, vectors, classes: Sequence[str], fractions: Sequence[float] = (0.05, 0.1, 0.25, 0.5, 1.0),
                   folds: int = 5, seed: int = 0, progress: Optional[ProgressCallback] = None,
                   cancel: Optional[CancelToken] = None, class_names: Optional[Sequence[str]] = None,
                   **head_params) -> list[dict]:
    """Macro-F1 on each held-out fold after training on a fraction of each training fold
    (at least one cell per class), as in the OpenCell paper's low-shot curves.

    Returns one dict per point (ascending): fraction (the smallest requested fraction giving these
    cells), requested (every requested fraction that gives the same cells: with few annotated cells
    several fractions round to the same training set, which is one point, not several),
    train_cells (cells really used, mean over folds), train_cells_per_fold, share (of each training
    fold, mean), macro_f1_mean, macro_f1_std, fold_macro_f1 (list), folds, notes
    (list). ``seed`` as in cross_validate."""
    head_params.setdefault("seed", seed)
    make_head(kind, class_names, **head_params)
    fractions = _check_fractions(fractions)
    x, names, y, splits, notes = _prepare(vectors, classes, folds, seed, class_names)
    rng = np.random.default_rng(seed)
    fold_subsets = [nested_subsets(y[train], fractions, rng) for train, _ in splits]
    # nested subsets: the same size in every fold means the same cells, so those fractions are one point
    points: dict[tuple[int, ...], list[float]] = {}
    for i, fraction in enumerate(fractions):
        points.setdefault(tuple(len(subsets[i]) for subsets in fold_subsets), []).append(fraction)
    first_of = {sizes: fractions.index(requested[0]) for sizes, requested in points.items()}
    scores = np.zeros((len(points), len(splits)))
    n_steps = len(splits) * len(points)
    for fold, (train, test) in enumerate(splits):
        for i, (sizes, requested) in enumerate(points.items()):
            check_cancel(cancel)
            subset = fold_subsets[fold][first_of[sizes]]
            step = fold * len(points) + i
            what = f"low-shot curve: fold {fold + 1} of {len(splits)}, {len(subset)} training cells"
            head = make_head(kind, names, **head_params).fit_encoded(
                x[train][subset], y[train][subset], names, _step_progress(progress, step, n_steps, what), cancel)
            predicted = head.predict_proba(x[test]).argmax(axis=1)
            scores[i, fold] = f1_from_confusion(confusion_matrix(y[test], predicted, len(names))).mean()
            report(progress, (step + 1) * 1000, n_steps * 1000, what)
    train_sizes = np.array([len(train) for train, _ in splits], dtype=np.float64)
    return [{"fraction": requested[0], "requested": list(requested), "train_cells": float(np.mean(sizes)),
             "train_cells_per_fold": list(sizes), "share": float(np.mean(np.array(sizes) / train_sizes)),
             "macro_f1_mean": float(scores[i].mean()), "macro_f1_std": float(scores[i].std()),
             "fold_macro_f1": scores[i].tolist(), "folds": len(splits), "notes": list(notes)}
            for i, (sizes, requested) in enumerate(points.items())]


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------
#: Colours of the saved PNGs (a light page); the Report panel passes the napari theme's instead.
LIGHT = {"background": "#ffffff", "canvas": "#ffffff", "text": "#000000", "secondary": "#888888"}


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(figure)
    return figure


def _save_png(figure, path) -> Path:
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", bbox_inches="tight", facecolor=figure.get_facecolor())
    return path


def _style(figure, axes, colours: Mapping[str, str]) -> None:
    """Background, text, ticks and frame in ``colours`` (keys of LIGHT; a napari theme gives the same)."""
    figure.set_facecolor(colours["background"])
    axes.set_facecolor(colours["canvas"])
    axes.tick_params(colors=colours["text"], labelsize=8)
    for label in (axes.xaxis.label, axes.yaxis.label, axes.title):
        label.set_color(colours["text"])
    for spine in axes.spines.values():
        spine.set_color(colours["secondary"])


def confusion_size(n_classes: int) -> tuple[float, float]:
    """(width, height) in inches that keep a cell's count readable."""
    size = 3.0 + 0.5 * n_classes
    return size + 1.2, size


def draw_confusion(figure, evaluation: Evaluation, colours: Mapping[str, str] = LIGHT) -> None:
    """Confusion matrix on ``figure``: colour = share of each true class, text = cell counts."""
    k = len(evaluation.class_names)
    figure.clear()
    axes = figure.add_subplot()
    counts = evaluation.confusion
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    size = 10 if k <= 8 else 8 if k <= 16 else 6
    for i in range(k):
        for j in range(k):
            axes.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=size,
                      color="white" if shares[i, j] > 0.5 else "black")
    axes.set_xticks(range(k), evaluation.class_names, rotation=60, ha="right")
    axes.set_yticks(range(k), evaluation.class_names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    how = f"{evaluation.folds}-fold cross-validated, " if evaluation.folds else ""
    # two lines: one line is wider than the matrix in a dock-wide figure, and would be cut
    axes.set_title(f"macro F1 {evaluation.macro_f1:.3f}\n({how}{evaluation.n_cells} cells)", fontsize=9)
    _style(figure, axes, colours)
    bar = figure.colorbar(image, ax=axes)
    bar.set_label("share of the true class", color=colours["text"])
    bar.ax.tick_params(colors=colours["text"], labelsize=8)
    bar.outline.set_edgecolor(colours["secondary"])


def plot_confusion(evaluation: Evaluation, path, colours: Mapping[str, str] = LIGHT) -> Path:
    """Confusion matrix as a PNG (``draw_confusion``)."""
    figure = _new_figure(*confusion_size(len(evaluation.class_names)))
    draw_confusion(figure, evaluation, colours)
    return _save_png(figure, path)


def draw_low_shot(figure, curve: Sequence[dict], colours: Mapping[str, str] = LIGHT) -> None:
    """Macro-F1 (mean +- std across folds) against the training cells really used, on ``figure``."""
    if not curve:
        raise DinolocError("The low-shot curve is empty: compute it with at least one fraction first.")
    figure.clear()
    axes = figure.add_subplot()
    cells = [row["train_cells"] for row in curve]
    axes.errorbar(cells, [row["macro_f1_mean"] for row in curve], yerr=[row["macro_f1_std"] for row in curve],
                  marker="o", capsize=3, color="#5ab4e5")
    axes.set_xscale("log")
    axes.set_xticks(cells, [f"{c:.0f}" if float(c).is_integer() else f"{c:.1f}" for c in cells])
    axes.minorticks_off()
    axes.set_ylim(0, 1.02)
    axes.set_xlabel(f"annotated training cells (mean of {curve[0]['folds']} folds)")
    axes.set_ylabel("macro F1 (held-out folds)")
    axes.grid(alpha=0.3, color=colours["secondary"])
    _style(figure, axes, colours)


def plot_low_shot(curve: Sequence[dict], path, colours: Mapping[str, str] = LIGHT) -> Path:
    """The low-shot curve as a PNG (``draw_low_shot``)."""
    figure = _new_figure(5, 3.6)
    draw_low_shot(figure, curve, colours)
    return _save_png(figure, path)


def write_report(outdir, evaluations: Mapping[str, Evaluation], curve: Optional[Sequence[dict]] = None) -> list[Path]:
    """``report.json`` plus a confusion-matrix PNG per evaluation (and the low-shot curve)."""
    from .files import write_json_atomic

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written = [plot_confusion(evaluation, outdir / f"confusion_{name}.png") for name, evaluation in evaluations.items()]
    if curve:
        written.append(plot_low_shot(curve, outdir / "low_shot.png"))
    report_path = outdir / "report.json"
    write_json_atomic(report_path, {"evaluations": {n: e.to_dict() for n, e in evaluations.items()}, "low_shot": list(curve or [])})
    return [report_path, *written]
