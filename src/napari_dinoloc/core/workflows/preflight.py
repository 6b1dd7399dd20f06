"""Checks before the long work: everything a batch needs that can be known without embedding a cell.

Outputs writable (the folders of output files created), the model bundle readable and its backbone the one asked for,
the annotation file readable and naming the images given, with two cells of each class, every image
readable with the stains the model needs, and the crop batch within memory. Images, read here as the
batch will read them, that cannot be used are noted in ``skips`` (a ``core.batch.Skips``) when given,
and left out of ``Plan.jobs``; without ``skips`` the first problem is raised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import DinolocError

SHOWN = 8  # image names listed in a message


@dataclass
class Plan:
    jobs: list                                   # the images that passed, in the order given
    names: list = field(default_factory=list)    # their names, as the annotation file must call them
    cell_classes: Any = None                     # core.batch.CellClasses, when an annotation file was given
    bundle: Any = None                           # core.bundle.ModelBundle, when a model file was given


def image_stains(job, options) -> tuple:
    """The stains of one image as the batch will see them (the pixels are read, nothing is embedded)."""
    return _read(job, options).stains


def _read(job, options):
    from ..batch import load_job_image

    return load_job_image(job, options)


def preflight(jobs: Sequence, options, *, outputs: Sequence = (), out_dirs: Sequence = (), annotations=None,
              model=None, backbone: Optional[str] = None, need_classes: bool = False, skips=None) -> Plan:
    """Check what can be checked before any cell is embedded; create the folders of ``outputs`` last
    (the writing steps check those exist before their work)."""
    from ..batch import guarded, tell

    folders = [_check_output(Path(path)) for path in outputs]
    for folder in out_dirs:  # created by the step that writes into them, so a failed run leaves none behind
        _check_folder(Path(folder))
    plan = Plan(list(jobs))
    if model is not None:
        plan.bundle = _bundle(model, backbone)
    if annotations is not None:
        from ..batch import read_cell_classes

        plan.cell_classes = read_cell_classes(annotations)
        tell(options, plan.cell_classes.notes)
    images = list(guarded(plan.jobs, skips, lambda job: (job, _checked_image(job, options, plan.bundle))))
    plan.jobs, plan.names = [job for job, _ in images], [image.name for _, image in images]
    if images:
        _check_crops(options, images[0][1].n_channels)
    if plan.cell_classes is not None:
        _check_annotated_images(plan, annotations, options, need_classes)
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    return plan


def _check_output(path: Path) -> Path:
    """The output file can be written; returns its folder (created at the end of the checks)."""
    from ..files import check_writable

    folder = path.parent if str(path.parent) else Path(".")
    if folder.is_dir():
        check_writable(path)
        return folder
    _check_folder(folder)
    return folder


def _check_folder(folder: Path) -> Path:
    """A folder that exists, or can be created: the nearest existing one above it is a folder we may write."""
    import os

    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise DinolocError(f"Cannot create the folder {folder}: {existing} is a file. Choose another output path.")
    if not os.access(existing, os.W_OK):
        raise DinolocError(f"Cannot write in {existing}: no permission. Choose another output path.")
    return folder


def _bundle(model, backbone: Optional[str]):
    from ..bundle import load_bundle
    from .predicting import check_backbone_agrees

    bundle = load_bundle(model)
    check_backbone_agrees(bundle, backbone, model)
    return bundle


def _checked_image(job, options, bundle):
    from ..bundle import check_bundle_fits

    image = _read(job, options)
    if bundle is not None:
        check_bundle_fits(bundle, image.stains)
    return image


def _check_crops(options, channels: int) -> None:
    from ..crops import check_batch_fits

    settings = getattr(options, "embed", None)
    if settings is not None and settings.crop_size:
        check_batch_fits(settings.crop_size, settings.batch_size, channels)


def _check_annotated_images(plan: Plan, path, options, need_classes: bool) -> None:
    """The annotation file names (some of) the images given; with ``need_classes``, two cells of each class."""
    from ..batch import tell
    from ..heads import encode_classes

    table = plan.cell_classes
    named = sorted(name for name in table if name)
    if named and plan.names:
        matched = [name for name in named if name in plan.names]
        if not matched:
            raise DinolocError(
                f"The annotation file {Path(path).name} names the images {_listed(named)}, but the images given are "
                f"named {_listed(plan.names)} (an image's name is its file name without the extension): "
                "correct the image column or give the images it names.")
        unmatched = [name for name in named if name not in plan.names]
        if unmatched:
            tell(options, [f"{len(unmatched)} image(s) named in {Path(path).name} are not among the images given "
                           f"and are ignored: {_listed(unmatched)}."])
    if need_classes:
        classes = [name for image in ([""] + plan.names) for name in (table.get(image) or {}).values()]
        encode_classes(classes, len(classes))


def _listed(names: Sequence[str]) -> str:
    more = f" (and {len(names) - SHOWN} more)" if len(names) > SHOWN else ""
    return ", ".join(repr(n) for n in names[:SHOWN]) + more
