"""The headless main job: the whole pipeline on the built-in synthetic sample.

A simulated microscopist annotates a share of the cells (taken from the ground truth), a head
is trained on them, every cell is predicted, and the run writes the per-cell CSV and a picture.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import defaults
from .errors import DinolocError


def has_display() -> bool:
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def ground_truth_classes(labels: np.ndarray, truth: np.ndarray, cell_class: dict) -> dict[int, str]:
    """Class of each found cell: that of the ground-truth cell it overlaps most."""
    found = labels.ravel()
    true = truth.ravel()
    keep = (found > 0) & (true > 0)
    pairs, counts = np.unique(np.stack([found[keep], true[keep]]), axis=1, return_counts=True)
    best: dict[int, tuple[int, int]] = {}
    for (cell, true_cell), count in zip(pairs.T, counts):
        if count > best.get(int(cell), (0, 0))[0]:
            best[int(cell)] = (int(count), int(true_cell))
    return {cell: cell_class[true_cell] for cell, (_, true_cell) in best.items() if true_cell in cell_class}


def choose_annotated(classes: dict[int, str], share: float, seed: int = 0) -> dict[int, str]:
    """A share of the cells of every class (at least 2 each), as a user would click them."""
    rng = np.random.default_rng(seed)
    chosen: dict[int, str] = {}
    for name in sorted(set(classes.values())):
        cells = sorted(cell for cell, c in classes.items() if c == name)
        take = min(len(cells), max(2, round(share * len(cells))))
        for cell in rng.choice(cells, size=take, replace=False):
            chosen[int(cell)] = name
    return chosen


def load_demo_backbone(name: str | None, say: Callable[[str], None]):
    """The named features; without a name the default (``defaults.FEATURES``), or random weights if even that
    cannot be loaded (said aloud)."""
    from .backbones import load_backbone
    from .classic import load_features

    if name:
        return load_features(name)
    try:
        return load_features(defaults.FEATURES)
    except DinolocError as exc:
        say(f"{exc} The demo goes on with the 'random' backbone (random weights): predictions show the pipeline, not DINO's accuracy.")
        return load_backbone("random")


def run_headless_demo(outdir, backbone=None, size: int = 768, share: float = 0.3, progress=None, say=print) -> Iterator[str]:
    from .embedding import EmbedSettings
    from .files import check_writable
    from .images import make_cell_image
    from .pipeline import Session
    from .segmentation import SegmentationParams
    from .synthetic import make_field
    from .table import write_table

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    csv_path = check_writable(outdir / "predictions.csv")
    field = make_field(seed=0, shape=(size, size), cell_stain=True)  # outlines from the cell stain, not the protein
    session = Session()
    session.set_image(make_cell_image(field.image, field.stains, name="synthetic_sample"))
    # a small field: border cells are kept so that every class has cells to annotate
    session.set_labels(session.segment(SegmentationParams(keep_border_cells=True), progress=progress))
    truth = ground_truth_classes(session.labels, field.labels, field.cell_class)
    annotations = choose_annotated(truth, share)
    session.set_backbone(load_demo_backbone(backbone, say))
    settings = EmbedSettings()  # the crop window follows the cell size
    session.set_embeddings(session.compute_embeddings(settings, progress=progress))
    session.set_head(session.train_head(defaults.HEAD, annotations, progress=progress))
    write_table(csv_path, session.rows(annotations), session.predictions.class_names)
    picture = write_prediction_picture(outdir / "predictions.png", session)
    yield f"{len(session.table)} cells found, {len(annotations)} annotated, backbone {session.backbone.name}"
    yield f"accuracy on the {len(truth) - len(annotations)} cells not annotated: {_held_out_accuracy(session, truth, annotations):.3f}"
    yield str(csv_path)
    yield str(picture)


def _held_out_accuracy(session, truth: dict, annotations: dict) -> float:
    predictions = session.predictions
    names = dict(zip(predictions.labels.tolist(), predictions.predicted_names))
    held_out = [cell for cell in truth if cell not in annotations and cell in names]
    return float(np.mean([names[cell] == truth[cell] for cell in held_out])) if held_out else float("nan")


def write_prediction_picture(path, session) -> Path:
    """The image (protein green, nucleus blue) beside the cells coloured by predicted class."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    from skimage.segmentation import find_boundaries

    from .files import atomic_write
    from .palette import class_colour

    predictions = session.predictions
    class_map = np.zeros(int(session.labels.max()) + 1, dtype=np.int32)
    class_map[predictions.labels] = predictions.predicted + 1
    class_image = class_map[session.labels]
    # the window's class palette: no channel hue, no grey (grey reads as "no class")
    cmap = ListedColormap(["#000000", *(class_colour(i) for i in range(len(predictions.class_names)))])
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 6.5), facecolor="black")
    left.imshow(_composite(session.image))
    right.imshow(class_image, cmap=cmap, vmin=0, vmax=len(cmap.colors) - 1, interpolation="nearest")
    right.contour(find_boundaries(session.labels), levels=[0.5], colors="white", linewidths=0.3)
    for axis, title in ((left, "image"), (right, "predicted localization")):
        axis.set_title(title, color="white")
        axis.axis("off")
    counts = np.bincount(predictions.predicted, minlength=len(predictions.class_names))
    handles = [Patch(color=cmap.colors[i + 1], label=f"{n} ({counts[i]})") for i, n in enumerate(predictions.class_names)]
    figure.legend(handles=handles, loc="lower center", ncol=5, frameon=False, labelcolor="white")
    figure.tight_layout(rect=(0, 0.08, 1, 0.95))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, facecolor="black")
    plt.close(figure)
    with atomic_write(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return Path(path)


def _composite(image) -> np.ndarray:
    rgb = np.zeros((*image.shape, 3), dtype=np.float32)
    for stain, slot in (("protein", 1), ("nucleus", 2), ("microtubules", 0)):
        channel = image.channel(stain)
        if channel is not None:
            rgb[..., slot] = channel
    return np.clip(rgb, 0, 1)
