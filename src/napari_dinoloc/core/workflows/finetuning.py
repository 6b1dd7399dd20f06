"""Fine-tuning the backbone on annotated cells: the run, its bundle, and the texts that sum it up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from ..errors import DinolocError
from ..progress import CancelToken, ProgressCallback

LEVEL_LABELS = {
    "head": "Head only (backbone frozen)",
    "last-blocks": "Last N blocks",
    "full": "Whole backbone",
}


@dataclass
class FinetuneRun:
    """A finished run and what it started from (a bundle and "use for all cells" need the base)."""

    result: Any          # core.finetune.FinetuneResult
    base: Any            # the LoadedBackbone fine-tuning started from (never modified)
    path: Optional[Path] = None  # where its bundle was written, when it was


def finetune_run(image_cells: Iterable, load_base: Callable[[], Any], embed_settings, settings,
                 progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                 on_epoch=None) -> FinetuneRun:
    """Fine-tune ``load_base()`` on ``image_cells`` ((image, labels, {label: class}) ...)."""
    from ..finetune import finetune

    base = load_base()
    return FinetuneRun(finetune(image_cells, base, embed_settings, settings, progress, cancel, on_epoch), base)


def bundle_of(run: FinetuneRun):
    from ..finetune import finetune_bundle

    return finetune_bundle(require_usable(run).result, run.base)


def bundle_path(out) -> Path:
    """``out`` with the bundle suffix."""
    from ..bundle import SUFFIX

    out = Path(out)
    return out if out.suffix == SUFFIX else out.with_name(out.name + SUFFIX)


def save_run(run: FinetuneRun, path, progress: Optional[ProgressCallback] = None,
             cancel: Optional[CancelToken] = None) -> Path:
    from ..bundle import save_bundle

    run.path = save_bundle(bundle_of(run), path, cancel=cancel, progress=progress)
    return run.path


def finetune_to_file(image_cells: Iterable, load_base: Callable[[], Any], embed_settings, settings, out,
                     progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                     on_epoch=None) -> FinetuneRun:
    """Fine-tune and save the bundle; ``out`` is checked before the training, not after."""
    from ..files import check_writable

    out = check_writable(bundle_path(out))
    run = finetune_run(image_cells, load_base, embed_settings, settings, progress, cancel, on_epoch)
    save_run(run, out, progress=progress)  # a diverged run is refused here: no file is written
    return run


def starting_point(session, base_settings=None):
    """(() -> the backbone fine-tuning starts from, embedding settings of the current embeddings).

    Fine-tuning again starts from the weights as loaded (``LoadedBackbone.base``), never from an
    earlier fine-tuned state; the loader form lets a worker call it."""
    from ..embedding import EmbedSettings

    session.require_embeddings()
    base = session.backbone.base
    return (lambda: base), EmbedSettings.from_signature(session.embeddings.signature, base_settings)


def check_fits(run: FinetuneRun, stains) -> None:
    from ..bundle import check_bundle_fits

    check_bundle_fits(bundle_of(run), stains)


def embed_with_run(session, run: FinetuneRun, progress=None, cancel=None):
    """(backbone, embeddings): the session's cells embedded with the fine-tuned backbone (changes nothing)."""
    from ..finetune import apply_finetuned

    session.require_cells()
    check_fits(run, session.image.stains)
    backbone = apply_finetuned(run.base, require_usable(run).result)
    return backbone, session.compute_embeddings(run.result.embed_settings, backbone, progress=progress, cancel=cancel)


def require_run(run: Optional[FinetuneRun]) -> FinetuneRun:
    if run is None:
        raise DinolocError("Nothing fine-tuned yet: annotate cells of two or more classes and press Fine-tune.")
    return require_usable(run)


def require_usable(run: FinetuneRun) -> FinetuneRun:
    """A diverged run is never used nor saved: its message says what to change."""
    if run.result.diverged:
        raise DinolocError(run.result.divergence)
    return run


# ---- texts -------------------------------------------------------------------------------------------------
def start_title(settings) -> str:
    if settings.level == "head":
        return "head only: fitting the classifier on more and more cells"
    return f"{LEVEL_LABELS[settings.level].lower()}: up to {settings.epochs} epochs"


def epochs_title(result) -> str:
    metrics, ran = result.metrics, len(result.history)
    if result.diverged:
        return f"diverged at epoch {ran}: stopped, do not use"
    if not ran:
        return "head only: held-out score against training cells"
    ending = "stopped early" if metrics.get("stopped_early") else "done"
    return f"{ending} after {ran} epoch{'s' * (ran != 1)}; best epoch {metrics.get('best_epoch', '?')}"


def run_summary(result) -> str:
    """One sentence for the panel: validation macro-F1 before and after, and the cells."""
    metrics = result.metrics
    if result.diverged:
        return result.divergence
    cells = f"{metrics.get('train_cells', '?')} training and {metrics.get('val_cells', '?')} validation cells"
    if "initial_val_f1" in metrics:
        return (f"validation macro-F1 {metrics['initial_val_f1']:.2f} (frozen) → {metrics['best_val_f1']:.2f} "
                f"(best epoch {metrics['best_epoch']}); {cells}.")
    return f"validation macro-F1 {metrics.get('macro_f1', 0.0):.2f} (head only); {cells}."


def file_summary(result, path) -> str:
    """One line for the command line: the file, the level, the cells, best epoch and the head."""
    cells = sum(result.class_counts.values())
    trained = "" if result.level == "head" else (
        f", best epoch {result.metrics.get('best_epoch')} of {result.metrics.get('epochs_run')}"
        f" (validation macro-F1 {result.metrics.get('initial_val_f1', 0):.3f} frozen -> {result.metrics.get('best_val_f1', 0):.3f})")
    return (f"{path}: {result.level} fine-tuning on {cells} cells{trained}; "
            f"{result.settings.head_kind} head, classes {', '.join(result.class_names)}")


def epoch_line(epoch: int, train_loss: float, val_f1: float) -> str:
    return f"epoch {epoch}: training loss {train_loss:.4f}, validation macro-F1 {val_f1:.3f}"
