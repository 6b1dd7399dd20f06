"""Evaluation on annotated cells: cross-validated macro-F1, low-shot curve, frozen vs fine-tuned, and
the report (text, pictures, report.json) the command line and the Report panel both give."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..progress import CancelToken, ProgressCallback

SEED = 0  # the folds of `dinoloc evaluate` with its default seed: the GUI and the CLI agree
CAPTIONS = {
    "frozen": "frozen backbone + head",
    "finetuned": "fine-tuned backbone + head",
    "finetuned_in_use": "fine-tuned backbone in use + head",
    "classic": "classic features + head (baseline, same folds)",
}
BASELINE = "classic"


@dataclass
class EvaluationPlan:
    vectors: Any                 # (N, D) embeddings of the annotated cells
    classes: list                # their classes
    class_names: Optional[list]  # class order (the annotation list's); None: sorted
    kind: str                    # head kind
    folds: int
    embeddings_name: str = "frozen"  # "frozen" or "finetuned_in_use": names the evaluation and its PNG
    fine_tune: Optional[tuple] = None  # (image_cells, base backbone loader, embed settings, FinetuneSettings)
    seed: int = SEED
    fractions: Optional[Sequence[float]] = None  # low-shot curve fractions; None: the engine's
    groups: Optional[Sequence] = None  # the image of each cell: folds split by image when several
    baseline: Optional[Any] = None     # the same cells' classic features, scored on the same folds
    baseline_of: Optional[Any] = None  # () -> the baseline, computed in the worker when ``baseline`` is None


@dataclass
class Report:
    evaluations: dict            # name -> core.evaluation.Evaluation
    curve: list                  # low_shot_curve rows
    comparison: Any = None       # core.finetune.FinetuneComparison, when fine-tuning was compared
    pictures: dict = field(default_factory=dict)  # caption -> PNG path
    folder: Any = None           # TemporaryDirectory holding the PNGs (removed with the report)


def evaluate(plan: EvaluationPlan, progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
             curve: bool = True) -> Report:
    """Cross-validate (or compare with fine-tuning inside each fold) and, with ``curve``, a low-shot curve."""
    from ..evaluation import cross_validate

    report = Report({}, [])
    if plan.fine_tune is not None:
        report.comparison = compare_frozen_vs_finetuned(*plan.fine_tune, folds=plan.folds, seed=plan.seed,
                                                        progress=progress, cancel=cancel)
        report.evaluations = {"frozen": report.comparison.frozen, "finetuned": report.comparison.finetuned}
    else:
        report.evaluations = {plan.embeddings_name: cross_validate(
            plan.kind, plan.vectors, plan.classes, plan.folds, plan.seed, progress, cancel, class_names=plan.class_names,
            groups=plan.groups)}
        if plan.baseline is None and plan.baseline_of is not None:
            plan.baseline = plan.baseline_of()
        if plan.baseline is not None:  # the honest baseline, on the same folds (same classes, seed, groups)
            report.evaluations[BASELINE] = cross_validate(
                plan.kind, plan.baseline, plan.classes, plan.folds, plan.seed, progress, cancel,
                class_names=plan.class_names, groups=plan.groups)
    if curve:
        report.curve = low_shot(plan, progress, cancel)
    return report


def low_shot(plan: EvaluationPlan, progress=None, cancel=None) -> list:
    from ..evaluation import low_shot_curve

    extra = {} if plan.fractions is None else {"fractions": plan.fractions}
    return low_shot_curve(plan.kind, plan.vectors, plan.classes, folds=plan.folds, seed=plan.seed,
                          progress=progress, cancel=cancel, class_names=plan.class_names, **extra)


def compare_frozen_vs_finetuned(image_cells, load_base, embed_settings, settings, folds: int = 5, seed: int = SEED,
                                progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None):
    """Cross-validated frozen + head against fine-tuned + head; ``load_base()`` gives the base backbone."""
    from ..finetune import compare_frozen_vs_finetuned as compare

    return compare(image_cells, load_base(), embed_settings, settings, folds=folds, seed=seed,
                   progress=progress, cancel=cancel)


def build_report(plan: EvaluationPlan, progress=None, cancel=None) -> Report:
    """Evaluate and draw the pictures into a temporary folder (worker thread)."""
    report = evaluate(plan, progress, cancel)
    report.folder = tempfile.TemporaryDirectory(prefix="dinoloc-report-")
    report.pictures = draw_pictures(report, Path(report.folder.name))
    return report


def draw_pictures(report: Report, folder: Path) -> dict:
    from ..evaluation import plot_confusion, plot_low_shot

    pictures = {f"Confusion matrix, {CAPTIONS.get(name, name)}": plot_confusion(ev, folder / f"confusion_{name}.png")
                for name, ev in report.evaluations.items()}
    pictures["Low-shot curve (current embeddings)"] = plot_low_shot(report.curve, folder / "low_shot.png")
    return pictures


def write_report(folder, report: Report) -> list[Path]:
    """report.json and the PNG figures into ``folder``."""
    from ..evaluation import write_report as write

    return write(folder, report.evaluations, report.curve or None)


# ---- the text -------------------------------------------------------------------------------------------
def folds_used(report: Report, plan: EvaluationPlan) -> int:
    """The folds the evaluations really used (fewer than asked when a class has too few cells): one number
    for the header, the tables and the curve."""
    used = {evaluation.folds for evaluation in report.evaluations.values()} | {row["folds"] for row in report.curve}
    return max(used) if used else plan.folds


def header_lines(report: Report, plan: EvaluationPlan, model: str) -> list[str]:
    """What was evaluated, how: classifier, folds actually used (and why fewer), cells, embeddings."""
    folds = folds_used(report, plan)
    how = f"{folds}-fold cross-validation"
    if folds != plan.folds:
        notes = [n for ev in report.evaluations.values() for n in ev.notes if n.startswith("Folds reduced")]
        how += f" ({notes[0]})" if notes else f" ({plan.folds} asked)"
    cells = len(plan.classes) if plan.vectors is not None else next(iter(report.evaluations.values())).n_cells
    lines = [f"Classifier: {plan.kind}, {how}", f"Cells: {cells} annotated", f"Embeddings: {model}"]
    if plan.embeddings_name == "finetuned_in_use":
        lines.append("Note: the backbone in use was fine-tuned on these same cells, so these scores are optimistic; "
                     "tick 'Compare with fine-tuning' for an honest estimate.")
    return lines


def report_text(report: Report, plan: EvaluationPlan, model: str) -> str:
    parts = header_lines(report, plan, model)
    if report.comparison is not None:
        parts += ["", report.comparison.format_table()]
    if BASELINE in report.evaluations:
        parts += ["", baseline_line(report)]
    for name, evaluation in report.evaluations.items():
        parts += ["", f"== {CAPTIONS.get(name, name)} ==", evaluation.format_table()]
    parts += ["", "== Low-shot curve (current embeddings) ==", *low_shot_lines(report.curve)]
    return "\n".join(parts)


def classic_rows(session, annotations: dict):
    """The annotated cells of the session described by the classic features, in the training set's order."""
    from ..classic import CLASSIC, load_features
    from .training import baseline_rows

    return baseline_rows(session, load_features(CLASSIC), annotations)


def baseline_line(report: Report) -> str:
    """The chosen features' macro-F1 next to the classic features' on the same folds."""
    scores = {name: ev.macro_f1 for name, ev in report.evaluations.items()}
    chosen = next(name for name in scores if name != BASELINE)
    verdict = "the chosen features help" if scores[chosen] > scores[BASELINE] else "the classic features do as well or better"
    return f"macro-F1: chosen features {scores[chosen]:.3f}, classic features {scores[BASELINE]:.3f} ({verdict})"


def low_shot_lines(curve) -> list[str]:
    lines = [f"{'cells':>7} {'share':>6} {'macro F1':>9} {'± folds':>8}"]
    for row in curve:
        lines.append(f"{cells_text(row):>7} {row['share']:>6.0%} {row['macro_f1_mean']:>9.3f} {row['macro_f1_std']:>8.3f}")
    return lines + list(curve[0]["notes"] if curve else [])


def cells_text(row: dict) -> str:
    """The training cells of a low-shot point: a whole number when every fold used the same count."""
    cells = row["train_cells"]
    return f"{cells:.0f}" if float(cells).is_integer() else f"{cells:.1f}"


def curve_lines(curve) -> list[str]:
    """The low-shot curve as the command line prints it, one line per point."""
    return [f"fraction {point['fraction']:.3f}: macro-F1 {point['macro_f1_mean']:.3f} ± {point['macro_f1_std']:.3f} "
            f"({cells_text(point)} training cells{merged_text(point)})" for point in curve]


def merged_text(point: dict) -> str:
    """Fractions that round to the same training cells are one point: say which."""
    requested = point.get("requested", [point["fraction"]])
    if len(requested) < 2:
        return ""
    return "; also " + ", ".join(f"{f:.3f}" for f in requested[1:]) + ": the same cells"


def comparison_text(report: Report) -> str:
    """Frozen vs fine-tuned as the command line prints it."""
    parts = [report.comparison.format_table()]
    for name, evaluation in (("frozen", report.comparison.frozen), ("fine-tuned", report.comparison.finetuned)):
        parts.append(f"\n== {name} ==\n{evaluation.format_table()}")
    return "\n".join(parts)


def model_description(session) -> str:
    signature = session.embeddings.signature
    weights = str(signature.get("weights_hash", ""))[:22]  # "finetuned:…" names fine-tuned weights
    return f"{signature.get('backbone')} ({weights}), {signature.get('strategy')}, {signature.get('embedding')}"


def session_plan(session, annotations: dict, class_names, kind: str, folds: int, fine_tune=None) -> EvaluationPlan:
    """What the Report panel evaluates: the annotated cells of the current image, its embeddings."""
    from ..backbones import is_fine_tuned
    from .training import check_classes

    session.require_embeddings()
    check_classes(annotations, class_names)
    vectors, classes = session.annotated_training_set(annotations)
    name = "finetuned_in_use" if is_fine_tuned(session.backbone) else "frozen"
    plan = EvaluationPlan(vectors, classes, list(class_names), kind, folds, name)
    if session.embeddings.signature.get("backbone") != BASELINE:
        plan.baseline_of = lambda: classic_rows(session, annotations)  # in the worker: a few seconds per field
    if fine_tune is not None:
        load_base, embed_settings, settings = fine_tune
        plan.fine_tune = ([(session.image, session.labels, annotations)], load_base, embed_settings, settings)
    return plan
