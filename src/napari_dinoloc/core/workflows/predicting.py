"""Predicting every cell with a saved model bundle or with a head trained now, and bundles of a session."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from .. import defaults
from ..errors import DinolocError
from ..progress import CancelToken, ProgressCallback

#: Embedding settings a saved head depends on, as named in the embeddings' signature.
SIGNATURE_OF_BUNDLE = {
    "backbone": "backbone_name", "weights_hash": "weights_hash", "strategy": "strategy", "embedding": "embedding",
    "input_size": "input_size", "mask_background": "mask_background",
}


@dataclass
class PredictionModel:
    head: Any                    # core.heads.Head
    backbone: Any                # LoadedBackbone the cells are embedded with
    options: Any                 # core.batch.RunOptions, embedding settings as the head needs them
    bundle: Any = None           # core.bundle.ModelBundle, when the head came from a file


@dataclass
class PredictionResult:
    path: Path
    cells: int
    unfamiliar: int = 0          # cells far from every training cell (docs/csv.md, column unfamiliar)
    familiarity_known: bool = True  # False: the model predates the flag, so no cell was flagged
    warnings: list = field(default_factory=list)  # images where most cells are unfamiliar
    summary_path: Optional[Path] = None        # the per-image summary CSV beside the per-cell one
    images: list = field(default_factory=list)  # its rows: cells, count and fraction per class, per image

    def summary(self) -> str:
        line = f"{self.path}: {self.cells} cells"
        if not self.familiarity_known:
            return line + " (unfamiliar cells not flagged: the model was saved before napari-dinoloc flagged them)"
        return line + f", {self.unfamiliar} of {self.cells} cells unfamiliar"


def bundle_setup(bundle, base_settings, weights=None, device: str = "auto"):
    """(backbone, embedding settings) that embed cells as the bundle's training cells were."""
    from ..bundle import backbone_for_bundle, embed_settings_for

    return backbone_for_bundle(bundle, weights, device), embed_settings_for(bundle, base_settings)


def model_from_bundle(path, options, weights=None, device: str = "auto", backbone: Optional[str] = None) -> PredictionModel:
    """The bundle's head and backbone; ``backbone``, when the user named one too, must be the bundle's."""
    from dataclasses import replace

    from ..bundle import load_bundle
    from ..embedding import EmbedSettings

    bundle = load_bundle(path)
    check_backbone_agrees(bundle, backbone, path)
    backbone, settings = bundle_setup(bundle, options.embed or EmbedSettings(), weights, device)
    return PredictionModel(bundle.head, backbone, replace(options, embed=settings), bundle)


def check_backbone_agrees(bundle, backbone: Optional[str], path) -> None:
    if backbone is not None and backbone != bundle.backbone_name:
        raise DinolocError(
            f"The model {Path(path).name} was trained on the backbone {bundle.backbone_name!r}, not {backbone!r}: "
            "leave out --backbone (the model brings its own) or give the model trained with that backbone.")


def model_trained_now(jobs: Sequence, options, backbone, annotations_path, head_kind: str = defaults.HEAD, cache=None,
                      progress: Optional[ProgressCallback] = None, skips=None) -> PredictionModel:
    from ..heads import train_head
    from .training import embedded_sessions, training_set

    sessions = embedded_sessions(jobs, options, backbone, cache, progress, skips=skips)
    cells = training_set(sessions, annotations_path, getattr(options, "notify", None))
    return PredictionModel(train_head(head_kind, cells.vectors, cells.classes), backbone, options)


def prediction_model(jobs: Sequence, options, *, model_path=None, annotations_path=None, head_kind: str = defaults.HEAD,
                     load_backbone=None, weights=None, device: str = "auto", cache=None,
                     progress: Optional[ProgressCallback] = None, backbone: Optional[str] = None,
                     skips=None) -> PredictionModel:
    """A saved bundle, or a head trained now on ``annotations_path`` (``load_backbone()`` gives its backbone)."""
    if model_path and annotations_path:
        raise DinolocError("Give either --model or --annotations, not both.")
    if model_path:
        return model_from_bundle(model_path, options, weights, device, backbone)
    if annotations_path:
        return model_trained_now(jobs, options, load_backbone(), annotations_path, head_kind, cache, progress, skips)
    raise DinolocError("Nothing to predict with: give --model (a bundle from dinoloc train) or --annotations with labelled cells.")


def predict_with_model(jobs: Sequence, model: PredictionModel, out, cache=None,
                       progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                       skips=None, keep_embeddings: Optional[list] = None) -> PredictionResult:
    """Predict every cell of every image; one CSV row per cell, one image in memory at a time, and
    the per-image summary (class counts and fractions) beside it (``core.image_summary``).
    With ``skips`` (a ``core.batch.Skips``) an image that cannot be used is noted and left out.
    ``keep_embeddings``: a list that gets (image name, Embeddings) of each image (for --zarr / --h5ad)."""
    from ..bundle import check_bundle_fits
    from ..files import check_writable
    from ..heads import unfamiliar_warning
    from ..image_summary import ImageSummary, summary_path_for
    from ..table import CsvTableWriter
    from .training import embedded_sessions

    summary_path = summary_path_for(out)
    check_writable(out)
    check_writable(summary_path)
    result, summary = PredictionResult(Path(out), 0, summary_path=summary_path), ImageSummary(model.head.class_names)
    with CsvTableWriter(out, model.head.class_names) as writer:
        for session in embedded_sessions(jobs, model.options, model.backbone, cache, progress, cancel, skips=skips):
            if model.bundle is not None:
                check_bundle_fits(model.bundle, session.image.stains)
            session.set_head(model.head)
            rows = session.rows()
            writer.write_rows(rows)
            summary.add_rows(rows)
            result.cells += len(session.table)
            if keep_embeddings is not None:
                keep_embeddings.append((session.image.name, session.embeddings))
            _count_unfamiliar(result, session.predictions, unfamiliar_warning(session.predictions, session.image.name))
    summary.write(summary_path)
    result.images = summary.rows()
    return result


def _count_unfamiliar(result: PredictionResult, predictions, warning: Optional[str]) -> None:
    result.unfamiliar += int(predictions.unfamiliar.sum())
    result.familiarity_known = result.familiarity_known and predictions.familiarity_known
    if warning:
        result.warnings.append(warning)


def session_prediction_model(session, class_counts: dict, options) -> PredictionModel:
    """The session's classifier and backbone, embedding other images as the session's cells were
    (the dock's Predict a folder: the same batch as ``dinoloc predict``)."""
    from dataclasses import replace

    from ..embedding import EmbedSettings

    if session.head is None or session.predictions is None:
        raise DinolocError("There is no classifier yet: annotate cells and press Train and predict (or Predict) first.")
    settings = EmbedSettings.from_signature(session.embeddings.signature)
    return PredictionModel(session.head, session.backbone, replace(options, embed=settings),
                           bundle_from_session(session, class_counts))


# ---- one image in a session (the widgets) ---------------------------------------------------------------
def embeddings_fit_bundle(bundle, embeddings) -> bool:
    """True when ``embeddings`` were made exactly as the bundle's training cells were."""
    if embeddings is None or bundle.backbone_state:  # a fine-tuned backbone: always embed its way
        return False
    signature = embeddings.signature
    same = all(signature.get(key) == getattr(bundle, field) for key, field in SIGNATURE_OF_BUNDLE.items())
    if bundle.crop_size is None:  # windows from the cell size: same multiple of the cell diameter
        same = same and signature.get("crop_mode") == "cells" and signature.get("crop_cells") == bundle.crop_cells
    else:
        same = same and signature.get("crop_mode", "fixed") == "fixed" and signature.get("crop_size") == bundle.crop_size
    return same and tuple(signature.get("stains", ())) == tuple(bundle.stains)


def predict_session_with_bundle(session, path, weights=None, device: str = "auto", base_settings=None,
                                progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None):
    """(backbone or None, embeddings or None, bundle): load the bundle; embed the cells its way unless
    they already are. Changes nothing in the session (a worker thread may run it)."""
    from ..bundle import check_bundle_fits, load_bundle
    from ..embedding import EmbedSettings

    bundle = load_bundle(path)
    check_bundle_fits(bundle, session.image.stains)
    if embeddings_fit_bundle(bundle, session.embeddings):
        return None, None, bundle
    backbone, settings = bundle_setup(bundle, base_settings or EmbedSettings(), weights, device)
    embeddings = session.compute_embeddings(settings, backbone, progress=progress, cancel=cancel)
    return backbone, embeddings, bundle



def bundle_from_session(session, class_counts: dict):
    """A model bundle of the current head, with the backbone and settings of the embeddings it was trained on."""
    from ..bundle import bundle_for_head
    from ..embedding import EmbedSettings

    classes = [name for name, count in class_counts.items() for _ in range(count)]
    settings = EmbedSettings.from_signature(session.embeddings.signature)
    return bundle_for_head(session.head, session.backbone, session.image.stains, settings, classes)


def save_session_model(session, class_counts: dict, path):
    from ..bundle import save_bundle

    if session.head is None or session.predictions is None:
        raise DinolocError("There is no trained model yet: annotate cells and press Train and predict first.")
    return save_bundle(bundle_from_session(session, class_counts), path)
