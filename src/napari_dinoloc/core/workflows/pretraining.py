"""Self-supervised DINO pretraining on the user's cells: the cells, the run, its files and a kNN probe.

The command line (``dinoloc pretrain``) and the dock's "Adapt the model to these cells" step both call
these. A run writes two files: the training checkpoint (DINO's layout: resumable, and readable by the
registry as a backbone) and, beside it, its teacher backbone as ``<stem>.safetensors`` (the file to use
as a backbone anywhere: ``--backbone checkpoint --weights <that file>``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..errors import Cancelled, DinolocError
from ..progress import CancelToken, ProgressCallback

SCRATCH, SHIPPED = "scratch", "shipped"
START_HELP = {
    SCRATCH: "random weights in the shipped cell model's architecture",
    SHIPPED: "the shipped cell model (dinoloc-cells) with its packaged weights",
}
#: What a run uses unless told otherwise (tests swap in a tiny model through these two names).
BASE_SETTINGS = None  # None: core.pretrain.PretrainSettings() as it is
SCRATCH_SPEC = None   # None: the shipped cell model's architecture (core.pretrain.CELL_MODEL_SPEC)
CROP_SIZE = 96        # stored crop size (views are cut from it at the model's input size)


def base_settings(**changes):
    """The pretraining settings with ``changes`` (budget, device, batch ...), None values left as they are."""
    from ..pretrain import PretrainSettings

    base = BASE_SETTINGS or PretrainSettings()
    changes = {k: v for k, v in changes.items() if v is not None}
    if "minutes" in changes and "epochs" not in changes:
        changes["epochs"] = None  # a time budget alone: the run plans its schedules for the minutes given
    return replace(base, **changes)


def default_crop_cache() -> Path:
    """The crop cache of pretraining, beside the embedding cache (``$DINOLOC_CACHE_DIR`` moves both)."""
    from ..cache import default_cache_dir

    return default_cache_dir() / "pretrain-crops"


def teacher_path(out) -> Path:
    """The teacher backbone written beside the checkpoint ``out``."""
    return Path(out).with_suffix(".safetensors")


def starting_point(start: Optional[str], weights=None):
    """(start, weights) for ``core.pretrain.pretrain`` from what a user names.

    ``scratch`` (default), ``shipped``, a registered backbone name (with ``weights`` when it needs a
    file), or a local checkpoint / safetensors file (read as the ``checkpoint`` backbone)."""
    from ..backbones import BACKBONES, CELL_MODEL
    from ..pretrain import CELL_MODEL_SPEC

    if start in (None, "", SCRATCH):
        return SCRATCH_SPEC or CELL_MODEL_SPEC, weights
    if start == SHIPPED:
        return CELL_MODEL, weights
    if start in BACKBONES:
        return start, weights
    if Path(start).is_file():
        if weights is not None:
            raise DinolocError("Give the starting checkpoint either as --start FILE or with --weights, not both.")
        return "checkpoint", Path(start)
    raise DinolocError(f"Unknown starting point {start!r}: use {SCRATCH}, {SHIPPED}, a backbone name "
                       f"({', '.join(BACKBONES.names())}) or an existing checkpoint file.")


# ---- the cells ---------------------------------------------------------------------------------------------
def image_cells(jobs: Sequence, options, cache_dir=None, size: int = CROP_SIZE, progress: Optional[ProgressCallback] = None,
                cancel: Optional[CancelToken] = None, say: Callable[[str], None] = lambda _: None):
    """The cells of ``jobs`` (core.batch.ImageJob), segmented with ``options`` or from their label images,
    through the crop cache (a second run neither reads the images' segmentation again nor re-crops)."""
    from ..pretrain import ImageSource, PretrainCells

    sources = [ImageSource(tuple(job.source) if isinstance(job.source, (list, tuple)) else job.source,
                           getattr(options, "stains", None), job.labels, "", getattr(options, "segmentation", None),
                           getattr(options, "channel_axis", None)) for job in jobs]
    return PretrainCells.from_images(sources, cache_dir or default_crop_cache(), size=size, progress=progress,
                                     cancel=cancel, say=say)


def session_cells(image, labels, size: int = CROP_SIZE):
    """The cells of one image already in memory (the dock's image and its cells)."""
    from ..pretrain import PretrainCells, cell_crops
    from ..stains import NUCLEUS, PROTEIN

    crops = cell_crops(image, labels, (PROTEIN, NUCLEUS), size)
    return PretrainCells([crops], (PROTEIN, NUCLEUS), [{"source": image.name, "cells": len(crops)}])


# ---- the run -----------------------------------------------------------------------------------------------
@dataclass
class PretrainRun:
    checkpoint: Path               # the training checkpoint (resumable; a backbone for the registry)
    teacher: Path                  # <stem>.safetensors: the teacher backbone with its spec
    losses: list[float]            # DINO loss of every step (resumed runs: from the first step)
    steps: int
    total_steps: int
    stopped: str                   # "done" | "time" | "cancelled"
    cells: int
    seconds: float = 0.0
    crops_per_second: float = 0.0
    probes: list[tuple[int, float]] = field(default_factory=list)  # (step, kNN macro-F1) after checkpoints

    def summary(self) -> str:
        ending = {"done": "done", "time": "time budget reached", "cancelled": "cancelled"}[self.stopped]
        loss = f"; DINO loss {self.losses[0]:.3f} → {self.losses[-1]:.3f}" if self.losses else ""
        speed = f", {self.crops_per_second:.0f} cells/s" if self.crops_per_second else ""
        probe = f"; kNN macro-F1 on the annotated cells {self.probes[-1][1]:.2f}" if self.probes else ""
        return f"{ending} after step {self.steps} of {self.total_steps} on {self.cells} cells{speed}{loss}{probe}."


def pretrain_model(cells, out, settings=None, start: Optional[str] = None, weights=None, resume: bool = False,
                   progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                   on_step=None, on_checkpoint: Optional[Callable[[int, Path], Optional[float]]] = None,
                   keep_on_cancel: bool = False) -> PretrainRun:
    """Train with DINO on ``cells`` (PretrainCells); write the checkpoint ``out`` and its teacher.

    ``on_checkpoint(step, teacher_file)`` runs (in the caller's thread) after every checkpoint, once the
    teacher file is up to date; a number it returns (e.g. ``knn_probe``'s) is kept in ``probes``. ``keep_on_cancel``: a cancelled run returns its last checkpoint
    (``stopped == "cancelled"``) instead of raising ``Cancelled``."""
    from ..files import check_writable
    from ..pretrain import export_checkpoint_teacher, pretrain

    out = Path(out)
    if out.suffix == ".safetensors":
        raise DinolocError(f"{out.name}: name the training checkpoint .pth; its teacher is written beside it as .safetensors.")
    if not resume:
        out.parent.mkdir(parents=True, exist_ok=True)
        check_writable(out)
        check_writable(teacher_path(out))
    settings = settings or base_settings()
    start_arg, weights_arg = starting_point(start, weights) if not resume else (None, None)
    seen = {"stamp": _stamp(out) if resume else None}
    probes: list[tuple[int, float]] = []

    def checkpointed(step: int) -> None:
        stamp = _stamp(out)
        if stamp is None or stamp == seen["stamp"]:
            return
        seen["stamp"] = stamp
        export_checkpoint_teacher(out, teacher_path(out))
        if on_checkpoint is not None:
            value = on_checkpoint(step, teacher_path(out))
            if value is not None:
                probes.append((step, float(value)))

    def each_step(info) -> None:
        if on_step is not None:
            on_step(info)
        checkpointed(info.step)

    try:
        result = pretrain(cells, settings, start=start_arg, weights=weights_arg, checkpoint_path=out, resume=resume,
                          progress=progress, cancel=cancel, on_step=each_step)
    except Cancelled:
        if not keep_on_cancel or _stamp(out) is None:
            raise
        from ..pretrain import read_training_checkpoint

        state = read_training_checkpoint(out)
        checkpointed(int(state["step"]))
        return PretrainRun(out, teacher_path(out), list(state["losses"]), int(state["step"]),
                           int(state["args"].total_steps), "cancelled", len(cells), probes=probes)
    checkpointed(result.steps)
    return PretrainRun(out, teacher_path(out), list(result.losses), result.steps, result.total_steps, result.stopped,
                       len(cells), result.seconds, result.crops_per_second, probes)


def _stamp(path: Path):
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size


# ---- how well the features separate the annotated cells ----------------------------------------------------
def knn_probe(backbone, image, labels, annotations: dict, settings=None, folds: int = 5, cancel=None) -> Optional[float]:
    """Cross-validated kNN (cosine) macro-F1 of ``backbone``'s embeddings of the annotated cells.

    Only classes with at least 2 annotated cells count; None when fewer than 2 such classes exist."""
    import numpy as np

    from ..embedding import EmbedSettings, embed_cells
    from ..evaluation import cross_validate

    usable = usable_annotations(annotations)
    if usable is None:
        return None
    keep = np.isin(labels, list(usable))
    embeddings = embed_cells(image, np.where(keep, labels, 0), backbone, settings or EmbedSettings(device="cpu"),
                             cancel=cancel)
    rows = [(i, usable[int(label)]) for i, label in enumerate(embeddings.labels) if int(label) in usable]
    if usable_annotations(dict((i, name) for i, name in rows)) is None:
        return None
    index, classes = zip(*rows)
    vectors = embeddings.vectors[list(index)]
    return float(cross_validate("knn", vectors, list(classes), folds=folds, cancel=cancel).macro_f1)


def usable_annotations(annotations: dict) -> Optional[dict]:
    from collections import Counter

    counts = Counter(name for name in annotations.values() if name)
    kept = {int(label): name for label, name in annotations.items() if name and counts[name] >= 2}
    return kept if len(set(kept.values())) >= 2 else None


def probe_text(f1: Optional[float]) -> str:
    if f1 is None:
        return "annotate at least 2 cells in each of 2 classes to see the kNN macro-F1 after each checkpoint"
    return f"kNN macro-F1 on the annotated cells: {f1:.2f}"


def usage_lines(run: PretrainRun) -> list[str]:
    """What the command line prints at the end: the files and how to use them."""
    return [
        f"{run.checkpoint}: training checkpoint ({run.summary()})",
        f"{run.teacher}: the teacher backbone",
        f"use it: --backbone checkpoint --weights {run.teacher} (or --weights {run.checkpoint}); "
        f"continue training: dinoloc pretrain ... --out {run.checkpoint} --resume",
    ]
