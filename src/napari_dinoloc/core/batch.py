"""Many images through the pipeline, one at a time, so memory does not grow with their number."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence

from .errors import DinolocError
from .pipeline import Session
from .progress import CancelToken, ProgressCallback, check_cancel


@dataclass
class ImageJob:
    """One image to process: its file(s) and, optionally, its label image."""

    source: object              # a path, or a list of per-stain paths
    labels: Optional[Path] = None


@dataclass
class RunOptions:
    stains: object = None                   # "protein=1,nucleus=0", a sequence, or None (from the file kind)
    channel_axis: Optional[int] = None
    segmentation: object = None             # SegmentationParams, or None for the defaults
    embed: object = None                    # EmbedSettings, or None for the defaults
    notify: Optional[Callable[[str], None]] = None  # told how each image was read (Z/T projections, ...)
    crop_mask: str = "whole"                # single-cell crops: the cell is the whole crop or its foreground


def tell(options: Optional[RunOptions], lines) -> None:
    """Pass notes on to whoever asked for them (the command line prints them)."""
    notify = getattr(options, "notify", None)
    if notify is not None:
        for line in lines:
            notify(line)


@dataclass(frozen=True)
class Skipped:
    image: str                  # the image as the user named it (file name, or HPA id)
    reason: str                 # the DinolocError's message


class Skips(list):
    """Images a batch went on without (a list of ``Skipped``). ``fail_fast``: the first problem is fatal.

    The batch functions take one as ``skips=``; without it every problem ends the batch, as before."""

    def __init__(self, fail_fast: bool = False):
        super().__init__()
        self.fail_fast = fail_fast

    def attempt(self, job: "ImageJob", call: Callable):
        """``call()``; on a DinolocError (but not a cancel) note the image and return None."""
        from .errors import Cancelled

        try:
            return call()
        except Cancelled:
            raise
        except DinolocError as exc:
            if self.fail_fast:
                raise
            self.add(job_name(job), str(exc))
            return None

    def add(self, image: str, reason: str) -> None:
        if all(s.image != image for s in self):  # one image skipped once, even if two steps refuse it
            self.append(Skipped(image, reason))

    def skipped(self, job: "ImageJob") -> bool:
        return any(s.image == job_name(job) for s in self)

    def lines(self) -> list[str]:
        return [f"{s.image}: {s.reason}" for s in self]

    def nothing_left(self, total: int) -> DinolocError:
        """The error when every image was skipped: the reasons, on one line."""
        if total == 1 and len(self) == 1:
            return DinolocError(self[0].reason)
        reasons = "; ".join(self.lines()[:EXAMPLES]) + (f"; and {len(self) - EXAMPLES} more" if len(self) > EXAMPLES else "")
        return DinolocError(f"None of the {total} images could be used: {reasons}")


def job_name(job: "ImageJob") -> str:
    source = job.source
    if hasattr(source, "index") and hasattr(source, "cls"):  # a single-cell crop (core.crop_inputs.CropSource)
        return source.name
    if isinstance(source, (list, tuple)):
        return ", ".join(Path(p).name for p in source)
    return Path(source).name


def guarded(jobs: Sequence["ImageJob"], skips: Optional[Skips], call: Callable) -> Iterator:
    """``call(job)`` for each job not yet skipped; with ``skips`` a refused image is noted and passed over;
    when every image was refused, the reasons are raised as one DinolocError."""
    done = 0
    for job in jobs:
        if skips is None:
            yield call(job)
            done += 1
            continue
        if skips.skipped(job):
            continue
        result = skips.attempt(job, lambda: call(job))
        if result is not None:
            done += 1
            yield result
    if skips and not done:
        raise skips.nothing_left(len(jobs))


def image_jobs(paths: Sequence[str | Path], labels: Sequence[str | Path] = ()) -> list[ImageJob]:
    """Group HPA per-stain files (<id>_red.png ...) and Cell Painting channel files (<site>-chN...)
    into one image each; pair label images in order."""
    from .images import find_cell_painting_groups, find_hpa_groups

    sources = _group_sources([Path(p) for p in paths], lambda ps: find_hpa_groups(ps) + find_cell_painting_groups(ps))
    if labels and len(labels) != len(sources):
        raise DinolocError(
            f"{len(labels)} label image(s) given for {len(sources)} image(s): give one label image per image, in the same order."
        )
    label_paths = [Path(p) for p in labels] or [None] * len(sources)
    return [ImageJob(source, label) for source, label in zip(sources, label_paths)]


IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
LABEL_SUFFIXES = ("_labels", "_label", "_mask", "_masks")  # label images beside their image are not images


def folder_images(folder: Path) -> list[Path]:
    """The image files of a folder, sorted; label images (``<name>_labels.tif``) are left out."""
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.stem.lower().endswith(LABEL_SUFFIXES) and not p.name.startswith("."))
    if not found:
        raise DinolocError(f"No image files ({', '.join(IMAGE_SUFFIXES)}) in the folder {folder}: choose the folder of the images.")
    return found


def _group_sources(paths: list[Path], find_hpa_groups) -> list:
    for path in paths:
        if not path.exists():
            raise DinolocError(f"Image not found: {path}. Check the path.")
    from .images._lazy import is_ome_zarr

    # a folder of images is its images; an OME-Zarr folder is one image
    paths = [image for path in paths
             for image in (folder_images(path) if path.is_dir() and not is_ome_zarr(path) else [path])]
    groups = find_hpa_groups(paths)
    grouped = {p for group in groups for p in group}
    sources: list = [list(g) for g in groups]
    sources += [p for p in paths if p not in grouped]
    return sources


def prepare_session(job: ImageJob, options: RunOptions, cache=None, progress: Optional[ProgressCallback] = None) -> Session:
    """Load the image and find its cells (from the given label image, or by segmentation)."""

    session = Session(cache=cache)
    session.set_image(load_job_image(job, options))
    tell(options, (f"{session.image.name}: {note}" for note in session.image.notes))
    if is_crop_job(job):
        from .crop_inputs import crop_labels

        session.set_labels(crop_labels(session.image, options.crop_mask))
    elif job.labels is not None:
        session.set_labels(read_label_image(job.labels))
    else:
        found = session.find_cells(options.segmentation, progress=progress)
        tell(options, (f"{session.image.name}: {note}" for note in found.notes))
        session.set_labels(found.cells)
    return session


def is_crop_job(job: ImageJob) -> bool:
    from .crop_inputs import CropSource

    return isinstance(job.source, CropSource)


def load_job_image(job: ImageJob, options: RunOptions):
    """The job's CellImage: an image file (group), or a single-cell crop."""
    from .images import load_cell_image

    if is_crop_job(job):
        from .crop_inputs import crop_image

        return crop_image(job.source, options.stains)
    return load_cell_image(job.source, options.stains, channel_axis=options.channel_axis)


def crop_jobs(path, classes_csv=None) -> list[ImageJob]:
    """One job per single-cell crop of a folder or stack file; their channel counts checked first."""
    from .crop_inputs import check_channel_counts, list_crops

    crops = list_crops(path, classes_csv)
    check_channel_counts(crops)
    return [ImageJob(crop) for crop in crops]


def read_label_image(path: Path):
    import numpy as np

    from .images import read_image

    raw = read_image(path)
    if raw.array.shape[0] != 1:
        raise DinolocError(f"The label image {path} has {raw.array.shape[0]} channels; give a single-channel label image (one integer id per cell).")
    labels = raw.array[0]
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.mod(labels, 1) == 0):
            raise DinolocError(f"The label image {path} holds fractional values; give an integer label image (one id per cell).")
        labels = labels.astype(np.int64)
    return labels


def iter_embedded_sessions(
    jobs: Sequence[ImageJob],
    options: RunOptions,
    backbone,
    cache=None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    skips: Optional[Skips] = None,
) -> Iterator[Session]:
    """Yield one session per image with cells and embeddings; earlier ones can then be dropped.
    With ``skips``, an image that cannot be read or used is noted there and the batch goes on."""
    from .embedding import EmbedSettings

    settings = options.embed or EmbedSettings()

    def embedded(job: ImageJob) -> Session:
        check_cancel(cancel)
        session = prepare_session(job, options, cache=cache)
        session.set_backbone(backbone)
        session.set_embeddings(session.compute_embeddings(settings, progress=progress, cancel=cancel))
        return session

    yield from guarded(jobs, skips, embedded)


EXAMPLES = 5  # problem rows named in a report; the rest are counted


class CellClasses(dict):
    """{image name: {label: class}} read from an annotation CSV, with what was odd about its rows.

    ``conflicts``: (image, label, classes in row order) for cells given different classes (the last
    row's class is used); ``repeated``: rows repeating a cell with the same class (harmless).
    """

    def __init__(self, table=(), conflicts=(), repeated: int = 0, path: Path | None = None):
        super().__init__(table)
        self.conflicts = list(conflicts)
        self.repeated = int(repeated)
        self.path = path

    @property
    def notes(self) -> list[str]:
        """Lines to show the user (empty when every cell has one class)."""
        if not self.conflicts:
            return []
        examples = "; ".join(f"{_cell_name(image, label)}: {' then '.join(classes)}"
                             for image, label, classes in self.conflicts[:EXAMPLES])
        more = f" (and {len(self.conflicts) - EXAMPLES} more)" if len(self.conflicts) > EXAMPLES else ""
        return [f"{len(self.conflicts)} cell(s) are given different classes in "
                f"{self.path.name if self.path else 'the annotation file'}; the last row's class is used: {examples}{more}."]


class ImageClasses(dict):
    """{label: class} for one image; ``unknown`` lists the annotated labels that are not cells of the image."""

    def __init__(self, table=(), unknown=(), image_name: str = ""):
        super().__init__(table)
        self.unknown = sorted(int(label) for label in unknown)
        self.image_name = image_name

    @property
    def notes(self) -> list[str]:
        if not self.unknown:
            return []
        shown = ", ".join(str(label) for label in self.unknown[:EXAMPLES])
        more = f" (and {len(self.unknown) - EXAMPLES} more)" if len(self.unknown) > EXAMPLES else ""
        return [f"{len(self.unknown)} annotated cell(s) do not exist in {self.image_name or 'the image'} and are "
                f"ignored: labels {shown}{more}. Check that the annotations were made on these labels."]


def _cell_name(image: str, label: int) -> str:
    return f"{image} cell {label}" if image else f"cell {label}"


def read_cell_classes(path: str | Path) -> CellClasses:
    """An annotation CSV (columns image, label, class) -> {image name: {label: class}} (a CellClasses).

    Without an ``image`` column every row applies to any image (key ""). Cells given two different
    classes are listed in ``.conflicts`` (and ``.notes``) of the result."""
    path = Path(path)
    if not path.is_file():
        raise DinolocError(f"Annotation file not found: {path}.")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return _read_rows(csv.DictReader(handle), path)
    except UnicodeDecodeError as exc:
        raise DinolocError(
            f"The annotation file {path} is not UTF-8 text (byte {exc.start} cannot be read). Save it as "
            "'CSV UTF-8' (in Excel: Save As > CSV UTF-8) and try again."
        ) from None
    except csv.Error as exc:
        raise DinolocError(f"The annotation file {path} is not a readable CSV table ({exc}).") from None


def _read_rows(reader: csv.DictReader, path: Path) -> CellClasses:
    missing = {"label", "class"} - set(reader.fieldnames or ())
    if missing:
        raise DinolocError(f"The annotation file {path} lacks the column(s) {sorted(missing)}: it needs label and class (and image for several images).")
    table: dict[str, dict[int, str]] = {}
    seen: dict[tuple[str, int], list[str]] = {}
    repeated = 0
    for number, row in enumerate(reader, start=2):
        name = (row.get("class") or "").strip()
        if not name:
            continue
        try:
            label = int(float(row["label"]))
        except (TypeError, ValueError, OverflowError):
            raise DinolocError(f"{path}, line {number}: the label {row['label']!r} is not a cell id.") from None
        image = (row.get("image") or "").strip()
        classes = seen.setdefault((image, label), [])
        repeated += bool(classes) and name in classes
        if name not in classes:
            classes.append(name)
        table.setdefault(image, {})[label] = name
    conflicts = [(image, label, tuple(classes)) for (image, label), classes in seen.items() if len(classes) > 1]
    return CellClasses(table, conflicts, repeated, path)


def classes_for_image(cell_classes: Mapping[str, Mapping[int, str]], image_name: str, cell_ids=None) -> ImageClasses:
    """The annotations of one image; with ``cell_ids`` (the image's cell labels) only those cells are kept
    and the others are listed in ``.unknown`` (and ``.notes``) of the result."""
    table = dict(cell_classes.get(image_name) or cell_classes.get("") or {})
    if cell_ids is None:
        return ImageClasses(table, (), image_name)
    existing = {int(label) for label in cell_ids}
    unknown = [label for label in table if int(label) not in existing]
    return ImageClasses({k: v for k, v in table.items() if int(k) in existing}, unknown, image_name)
