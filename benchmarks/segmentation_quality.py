"""Share of ground-truth cells that segmentation finds (IoU >= 0.5) on synthetic fields, and its time.

    .venv/bin/python benchmarks/segmentation_quality.py [--sizes 384 1024] [--seeds 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_dinoloc.core.images import make_cell_image  # noqa: E402
from napari_dinoloc.core.segmentation import match_cells, segment_cells  # noqa: E402
from napari_dinoloc.core.synthetic import make_field  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[384, 1024])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    print(f"{'size':>6} {'cells':>6} {'matched min':>12} {'matched mean':>13} {'s per field':>12}")
    for size in args.sizes:
        fractions, cells, seconds = [], 0, 0.0
        for seed in range(args.seeds):
            field = make_field(seed=seed, shape=(size, size))
            start = time.perf_counter()
            labels = segment_cells(make_cell_image(field.image, field.stains))
            seconds += time.perf_counter() - start
            fractions.append(match_cells(labels, field.labels, iou=0.5))
            cells += int(field.labels.max())
        print(f"{size:>6} {cells // args.seeds:>6} {min(fractions):>12.3f} {sum(fractions) / len(fractions):>13.3f} "
              f"{seconds / args.seeds:>12.2f}")


if __name__ == "__main__":
    main()
