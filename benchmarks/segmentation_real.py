"""Segmentation against reference masks, default settings (no hand-tuned sizes).

Real: the CellProfiler nucleus and cell masks of the NF1 Cell Painting plate 2 fields (DAPI = nucleus,
GFP = protein, RFP = the cell stain, as 'other'). The masks are binary; nuclei are their connected
blobs, and cells are rebuilt as the cell mask shared out between the reference nuclei (nearest
nucleus), since touching cells share one blob. Synthetic: fields whose protein is nuclear, nucleolar
or punctate, with a cell stain (microtubules) given.

    PYTHONPATH=src python benchmarks/segmentation_real.py [--data DIR] [--seeds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_dinoloc.core.images import make_cell_image  # noqa: E402
from napari_dinoloc.core.segmentation import match_cells, segment_cells, segment_nuclei, SegmentationParams  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared/data/cellpainting/nf1_plate2"


def f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    """F1 at IoU >= 0.5: 2 TP / (predicted + reference objects)."""
    n_true, n_pred = len(np.unique(truth[truth > 0])), len(np.unique(predicted[predicted > 0]))
    tp = match_cells(predicted, truth, 0.5) * n_true
    return 2 * tp / max(n_true + n_pred, 1)


def reference(masks: Path, well: str) -> tuple[np.ndarray, np.ndarray]:
    import tifffile
    from skimage.segmentation import watershed

    nuclei_mask = tifffile.imread(next(masks.glob(f"{well}_1_*MaskNuclei.tiff"))) > 0
    cell_mask = tifffile.imread(next(masks.glob(f"{well}_3_*MaskCells.tiff"))) > 0
    nuclei = ndi.label(nuclei_mask)[0]
    area = cell_mask | nuclei_mask
    cells = watershed(ndi.distance_transform_edt(nuclei == 0), nuclei, mask=area)
    return nuclei, cells


def field_image(images: Path, well: str):
    import tifffile

    channels = []
    for index in (1, 2, 3):
        raw = tifffile.imread(next(images.glob(f"{well}_{index}_*.tif"))).astype(np.float32)
        low, high = np.percentile(raw, [0.1, 99.9])
        channels.append(np.clip((raw - low) / (high - low), 0, 1))
    return make_cell_image(np.stack(channels), ("nucleus", "protein", "other"))


def real(data: Path) -> None:
    print(f"{'field':>10} {'ref nuclei':>10} {'nuclei F1':>10} {'ref cells':>10} {'cells F1':>9} {'s':>6}")
    scores = []
    for path in sorted((data / "Plate_2_images").glob("*_1_*_DAPI_*.tif")):
        well = "_".join(path.name.split("_")[:2])
        nuclei_ref, cells_ref = reference(data / "Plate_2_masks", well)
        image = field_image(data / "Plate_2_images", well)
        start = time.perf_counter()
        try:  # this engine: the nuclei and sizes the cells were made with
            from napari_dinoloc.core.segmentation import segment

            found = segment(image)
            cells, nuclei = found.cells, found.nuclei
        except ImportError:  # before: nuclei found again with the default sizes
            cells = segment_cells(image)
            nuclei = segment_nuclei(image.channel("nucleus"), SegmentationParams())
        seconds = time.perf_counter() - start
        scores.append((f1(nuclei, nuclei_ref), f1(cells, cells_ref)))
        print(f"{well:>10} {nuclei_ref.max():>10} {scores[-1][0]:>10.2f} {len(np.unique(cells_ref)) - 1:>10} "
              f"{scores[-1][1]:>9.2f} {seconds:>6.1f}")
    mean = np.mean(scores, axis=0)
    print(f"{'mean':>10} {'':>10} {mean[0]:>10.2f} {'':>10} {mean[1]:>9.2f}")


def synthetic(seeds: int) -> None:
    from napari_dinoloc.core.synthetic import make_field

    print(f"{'protein':>12} {'cells':>6} {'matched':>8}")
    for name in ("nucleoplasm", "nucleoli", "vesicles", "centrosome"):
        fractions, cells = [], 0
        for seed in range(seeds):
            try:
                field = make_field(seed=seed, shape=(512, 512), classes=(name,), cell_stain=True)
            except TypeError:  # before this issue: no cell stain in synthetic fields
                print("synthetic fields with a cell stain need this issue's code")
                return
            image = make_cell_image(field.image, field.stains)
            labels = segment_cells(image)
            truth = drop_border(field.labels)
            fractions.append(match_cells(labels, truth, 0.5))
            cells += int(len(np.unique(truth)) - 1)
        print(f"{name:>12} {cells:>6} {np.mean(fractions):>8.3f}")


def drop_border(labels: np.ndarray) -> np.ndarray:
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.where(np.isin(labels, edge[edge > 0]), 0, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args()
    if not args.skip_real:
        real(args.data)
    synthetic(args.seeds)


if __name__ == "__main__":
    main()
