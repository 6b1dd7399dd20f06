"""Labelled cells for feature benchmarks: the real HPA composites (image-level classes) and synthetic fields.

Every cell carries a group id (its image or field) so that cross-validation can keep all cells of one
image on the same side of a split: cells of one image share far more than their class (staining,
exposure, cell line), and splitting them would flatter every feature set.

    .venv/bin/python benchmarks/real_cells.py            # segmentation summary of the HPA composites
"""

from __future__ import annotations

import csv
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_dinoloc.core.demo import ground_truth_classes  # noqa: E402
from napari_dinoloc.core.errors import DinolocError  # noqa: E402
from napari_dinoloc.core.images import make_cell_image, read_image  # noqa: E402
from napari_dinoloc.core.segmentation import CellTable, SegmentationParams, segment_cells  # noqa: E402
from napari_dinoloc.core.synthetic import make_field  # noqa: E402

HPA_COMPOSITES = Path(__file__).resolve().parents[2] / "shared" / "data" / "hpa_composites"
#: RGB composites from the HPA website: red microtubules, green protein, blue nucleus.
HPA_STAINS = ("microtubules", "protein", "nucleus")
#: The composites carry a white scale bar: pixels this bright in every channel are set to 0 so that it
#: is not taken for a nucleus (stained structures are never white in all three channels).
SCALE_BAR_LEVEL = 200


class CellSet(NamedTuple):
    images: list  # CellImage per image
    labels: list  # (Y, X) int32 cell labels per image
    tables: list  # CellTable per image
    classes: np.ndarray  # (N,) class name of every cell, images in order, cells in table order
    groups: np.ndarray  # (N,) index of the cell's image in ``images``
    notes: list  # what was skipped and why, cells per image


@dataclass
class _Collector:
    images: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    tables: list = field(default_factory=list)
    classes: list = field(default_factory=list)
    groups: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def add(self, image, labels, table, cell_classes: Sequence[str]) -> None:
        self.classes.extend(cell_classes)
        self.groups.extend([len(self.images)] * len(cell_classes))
        self.images.append(image)
        self.labels.append(labels)
        self.tables.append(table)

    def result(self) -> CellSet:
        return CellSet(self.images, self.labels, self.tables, np.asarray(self.classes, dtype=object).astype(str),
                       np.asarray(self.groups, dtype=np.int64), self.notes)


def read_hpa_labels(root: Path) -> list[tuple[str, str]]:
    with open(root / "labels.csv", newline="") as handle:
        return [(row["file"], row["label_name"]) for row in csv.DictReader(handle)]


def choose_images(entries: list[tuple[str, str]], min_images_per_class: int) -> list[tuple[str, str]]:
    counts: dict[str, int] = {}
    for _, name in entries:
        counts[name] = counts.get(name, 0) + 1
    return [(file, name) for file, name in entries if counts[name] >= min_images_per_class]


def subsample_by_image(cells: CellSet, max_cells: int | None, seed: int = 0) -> CellSet:
    """Whole images dropped at random (never single cells) until at most ``max_cells`` remain,
    keeping at least two images of every class as long as possible."""
    if max_cells is None or len(cells.classes) <= max_cells:
        return cells
    rng = np.random.default_rng(seed)
    image_class = {g: cells.classes[cells.groups == g][0] for g in range(len(cells.images)) if (cells.groups == g).any()}
    keep = set(image_class)
    sizes = np.bincount(cells.groups, minlength=len(cells.images))
    total = int(sizes.sum())
    for g in rng.permutation(sorted(image_class)):
        if total <= max_cells:
            break
        same = [h for h in keep if image_class[h] == image_class[g]]
        if len(same) > 2:
            keep.discard(int(g))
            total -= int(sizes[g])
    order = sorted(keep)
    out = _Collector(notes=list(cells.notes))
    for g in order:
        out.add(cells.images[g], cells.labels[g], cells.tables[g], list(cells.classes[cells.groups == g]))
    out.notes.append(f"subsampled by image to {len(out.classes)} cells in {len(order)} images (at most {max_cells})")
    return out.result()


def load_hpa_composite(path: Path):
    """The composite as a CellImage (microtubules, protein, nucleus), its scale bar blanked."""
    raw = read_image(path)
    array = raw.array.copy()
    array[:, (array >= SCALE_BAR_LEVEL).all(axis=0)] = 0
    return make_cell_image(array, HPA_STAINS, raw.name, raw.notes)


def hpa_composite_cells(min_images_per_class: int = 2, root: Path | str = HPA_COMPOSITES, max_cells: int | None = None,
                        seed: int = 0, params: SegmentationParams = SegmentationParams(), say=None) -> CellSet:
    """Cells of the HPA composites, segmented with ``params`` (default settings unless given); every cell
    gets its image's class. Only classes with at least ``min_images_per_class`` images are kept, so folds
    can be split by image; images where segmentation finds nothing are skipped with a note."""
    root = Path(root)
    out = _Collector()
    for file, class_name in choose_images(read_hpa_labels(root), min_images_per_class):
        image = load_hpa_composite(root / file)
        start = time.perf_counter()
        try:
            labels = segment_cells(image, params)
        except DinolocError as exc:
            out.notes.append(f"{file}: skipped, segmentation found no cells ({exc})")
            continue
        table = CellTable.from_labels(labels)
        seconds = time.perf_counter() - start
        note = f"{file} ({class_name}): {len(table)} cells, median area {np.median(table.area) if len(table) else 0:.0f} px, {seconds:.1f} s"
        out.notes.append(note)
        if say:
            say(note)
        if len(table) == 0:
            continue
        out.add(image, labels, table, [class_name] * len(table))
    return subsample_by_image(_drop_thin_classes(out.result(), min_images_per_class), max_cells, seed)


def _drop_thin_classes(cells: CellSet, min_images: int) -> CellSet:
    """Classes left with fewer images than asked (images skipped above) are dropped too."""
    images_of: dict[str, set] = {}
    for name, g in zip(cells.classes, cells.groups):
        images_of.setdefault(name, set()).add(int(g))
    thin = {name for name, images in images_of.items() if len(images) < min_images}
    if not thin:
        return cells
    out = _Collector(notes=list(cells.notes) + [f"dropped class(es) {sorted(thin)}: fewer than {min_images} images with cells"])
    for g in range(len(cells.images)):
        chosen = cells.classes[cells.groups == g]
        if len(chosen) and chosen[0] not in thin:
            out.add(cells.images[g], cells.labels[g], cells.tables[g], list(chosen))
    return out.result()


def synthetic_cells(seeds: Sequence[int] = range(8), size: int = 768, max_cells: int | None = None, say=None) -> CellSet:
    """Cells of synthetic fields (one group per field), segmented like a user's image; each found cell
    takes the class of the ground-truth cell it overlaps most."""
    out = _Collector()
    for seed in seeds:
        synthetic = make_field(seed=seed, shape=(size, size), cell_stain=True)  # outlines from a cell stain
        image = make_cell_image(synthetic.image, synthetic.stains, name=f"synthetic-{seed}")
        labels = segment_cells(image)
        truth = ground_truth_classes(labels, synthetic.labels, synthetic.cell_class)
        table = CellTable.from_labels(labels)
        keep = np.array([label in truth for label in table.label])
        if not keep.all():  # found cells that overlap no true cell: unlabeled, leave them out
            labels = np.where(np.isin(labels, table.label[~keep]), 0, labels).astype(np.int32)
            table = CellTable.from_labels(labels)
        out.notes.append(f"synthetic seed {seed}: {len(table)} cells ({int((~keep).sum())} found cells outside any true cell dropped)")
        if say:
            say(out.notes[-1])
        out.add(image, labels, table, [truth[int(label)] for label in table.label])
    return subsample_by_image(out.result(), max_cells)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Segmentation of the HPA composites, cells per image")
    parser.add_argument("--nucleus-diameter", type=float, default=None, help="default: measured from each image")
    parser.add_argument("--cell-diameter", type=float, default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    cells = hpa_composite_cells(params=SegmentationParams(args.nucleus_diameter, args.cell_diameter), say=print)
    counts = [len(t) for t in cells.tables]
    print(f"{len(cells.images)} images, {len(cells.classes)} cells, {len(set(cells.classes))} classes; cells per image "
          f"min {min(counts)} median {int(np.median(counts))} max {max(counts)}; {time.perf_counter() - start:.0f} s")
    for note in cells.notes:
        if "skipped" in note or "dropped" in note:
            print(note)


if __name__ == "__main__":
    main()
