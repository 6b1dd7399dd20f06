"""The images of a screen: a CSV manifest (a path per stain, or ``path`` + --channels; plate, well, site
and any other columns carried into the outputs), folders walked recursively, or image files as today."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..batch import ImageJob, image_jobs
from ..errors import DinolocError
from ..stains import STAINS
from ..table import LEADING_COLUMNS, TRAILING_COLUMNS

#: Files a walked folder yields (OME-Zarr folders are images, not walked into; vendor files need bioio).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".zarr", ".czi", ".nd2", ".lif")
#: A walked file ``<image>_labels.tif`` is the label image of ``<image>.tif`` beside it, not an image.
LABELS_SUFFIX = "_labels"
PATH_COLUMN, LABELS_COLUMN = "path", "labels"
#: Metadata columns put first, in this order, when present.
WELL_COLUMNS = ("plate", "well", "site")


@dataclass
class ScreenImage:
    key: str                                  # unique, file-name safe: names the image's shard
    job: ImageJob
    metadata: dict = field(default_factory=dict)
    tiles: Optional[dict] = None              # a very large image's tile plan (``_tile_plan``); None: one task

    def describe(self) -> dict:
        """JSON-able: what the run manifest records of this input."""
        source = self.job.source
        paths = [str(p) for p in source] if isinstance(source, (list, tuple)) else str(source)
        item = {"key": self.key, "source": paths, "labels": str(self.job.labels or ""), "metadata": self.metadata}
        return {**item, "tiles": self.tiles} if self.tiles else item


@dataclass
class ScreenInputs:
    images: list
    stains: Optional[tuple] = None            # from a manifest's stain columns (then --channels is not needed)
    metadata_columns: tuple = ()


def is_screen_input(path: Path) -> bool:
    """A CSV manifest, or a folder to walk (an OME-Zarr folder is one image)."""
    from ..images._lazy import is_ome_zarr

    return path.suffix.lower() == ".csv" or (path.is_dir() and not is_ome_zarr(path))


def screen_inputs(paths: Sequence[Path], labels: Sequence[Path] = (), channels=None) -> ScreenInputs:
    paths = [Path(p) for p in paths]
    manifests = [p for p in paths if p.suffix.lower() == ".csv"]
    if manifests:
        if len(paths) > 1 or labels:
            raise DinolocError("Give the CSV manifest alone: its rows name the images (and a labels column the label images).")
        return read_manifest(manifests[0], channels)
    walked = {f for p in paths if is_screen_input(p) for f in walk_folder(p)}
    files = [f for p in paths for f in (walk_folder(p) if is_screen_input(p) else [p])]
    if not files:
        raise DinolocError(f"No image files found in {', '.join(map(str, paths))} (looked for {', '.join(IMAGE_SUFFIXES)}).")
    jobs = image_jobs(files, labels)
    if not labels:  # only walked folders: a file given by name is segmented, as today
        for job in jobs:
            grouped = isinstance(job.source, (list, tuple))  # per-stain files: no label image beside them
            job.labels = None if grouped or job.source not in walked else _labels_beside(job.source)
    return ScreenInputs([ScreenImage(image_key(job), job) for job in jobs])


def walk_folder(folder: Path) -> list[Path]:
    """Image files under ``folder``, sorted, recursively; hidden entries and label images left out."""
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.suffix.lower() == ".zarr" or (entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES):
            if not entry.stem.endswith(LABELS_SUFFIX):
                found.append(entry)
        elif entry.is_dir():
            found.extend(walk_folder(entry))
    return found


def _labels_beside(source) -> Optional[Path]:
    source = Path(source)
    candidate = source.with_name(f"{source.stem}{LABELS_SUFFIX}{source.suffix}")
    return candidate if source.is_file() and candidate.is_file() else None


def read_manifest(path: Path, channels=None) -> ScreenInputs:
    """One image per row; paths relative to the CSV's folder."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in reader.fieldnames or ()]
            rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except UnicodeDecodeError:
        raise DinolocError(f"The manifest {path} is not UTF-8 text: save it as 'CSV UTF-8'.") from None
    except OSError as exc:
        raise DinolocError(f"Cannot read the manifest {path}: {exc.strerror}.") from None
    stain_columns = [h for h in header if h.lower() in STAINS]
    stains = _manifest_stains(path, header, stain_columns, channels)
    metadata_columns = _metadata_columns(path, header, stain_columns)
    images, keys = [], set()
    for number, row in enumerate(rows, start=2):
        image = _manifest_image(path, number, row, stain_columns, metadata_columns)
        if image.key in keys:
            raise DinolocError(f"{path}, line {number}: this image is listed twice. List each image once.")
        keys.add(image.key)
        images.append(image)
    if not images:
        raise DinolocError(f"The manifest {path} lists no images.")
    return ScreenInputs(images, stains, metadata_columns)


def _manifest_stains(path: Path, header, stain_columns, channels) -> Optional[tuple]:
    if stain_columns and PATH_COLUMN in header:
        raise DinolocError(f"The manifest {path} has both a path column and stain columns ({', '.join(stain_columns)}): "
                           "give one file per stain in stain columns, or one file per image in a path column.")
    if stain_columns:
        if channels:
            raise DinolocError(f"The manifest {path} names the stains in its columns: leave out --channels.")
        return tuple(c.lower() for c in stain_columns)
    if PATH_COLUMN not in header:
        raise DinolocError(f"The manifest {path} needs a 'path' column (with --channels) or a column per stain "
                           f"named after it (e.g. protein,nucleus; stains: {', '.join(STAINS)}).")
    return None


def _metadata_columns(path: Path, header, stain_columns) -> tuple:
    others = [h for h in header if h not in stain_columns and h not in (PATH_COLUMN, LABELS_COLUMN) and h]
    clash = [h for h in others if h in LEADING_COLUMNS or h in TRAILING_COLUMNS or h.startswith("prob_")]
    if clash:
        raise DinolocError(f"The manifest {path} has column(s) {', '.join(clash)} that the per-cell table writes itself: "
                           "rename them (e.g. source_image).")
    first = [h for h in WELL_COLUMNS if h in others]
    return tuple(first + [h for h in others if h not in first])


def _manifest_image(path: Path, number: int, row: dict, stain_columns, metadata_columns) -> ScreenImage:
    folder = path.parent
    names = [row.get(c, "") for c in stain_columns] if stain_columns else [row.get(PATH_COLUMN, "")]
    if not all(names):
        raise DinolocError(f"{path}, line {number}: an image path is empty. Give a file in every path or stain column.")
    files = [(folder / n) for n in names]
    for file in files:
        if not file.exists():
            raise DinolocError(f"{path}, line {number}: image not found: {file}. Paths are relative to the manifest's folder.")
    labels = folder / row[LABELS_COLUMN] if row.get(LABELS_COLUMN) else None
    job = ImageJob(files if stain_columns else files[0], labels)
    metadata = {c: row.get(c, "") for c in metadata_columns}
    return ScreenImage(image_key(job, metadata), job, metadata)


def image_key(job: ImageJob, metadata: Optional[dict] = None) -> str:
    """The image's name made file-name safe, and a short hash of its files (and metadata) so keys are unique."""
    source = job.source
    first = Path(source[0] if isinstance(source, (list, tuple)) else source)
    name = first.name[: -len(".ome.zarr")] if first.name.endswith(".ome.zarr") else first.stem
    where = [str(Path(p).resolve()) for p in (source if isinstance(source, (list, tuple)) else [source])]
    digest = hashlib.sha1(json.dumps([where, metadata or {}], sort_keys=True).encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)[:60]}-{digest}"
