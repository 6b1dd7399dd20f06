"""The shipped cell model against its baselines: does DINO pretraining earn it the default place?

Accuracy: cross-validated macro-F1 (kNN cosine and logistic heads; folds split by image, the same
folds for every feature set) on synthetic fields and on the cells of the real HPA composites, for
the shipped model (``dinoloc-cells``), the same architecture with random weights, the ``random``
ViT-S/16 and the ``classic`` features. Speed: a 2048x2048 field from pixels to per-cell predictions
(segmentation, crops, embedding, head) with the shipped model and with ViT-S/16 in the same run.

    .venv/bin/python benchmarks/bench_cell_model.py --out /tmp/cell_model.json [--weights file.safetensors]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench_features import HEADS, classic_vectors, cross_validated_f1, group_folds  # noqa: E402
from real_cells import hpa_composite_cells, synthetic_cells  # noqa: E402

from napari_dinoloc.core.backbones import BACKBONES, CELL_MODEL, load_backbone, register_backbone  # noqa: E402
from napari_dinoloc.core.classic.backbone import ClassicBackbone  # noqa: E402
from napari_dinoloc.core.classic.extractor import standardised_block  # noqa: E402
from napari_dinoloc.core.crops import crop_size_for  # noqa: E402
from napari_dinoloc.core.embedding import EmbedSettings, embed_cells  # noqa: E402
from napari_dinoloc.core.files import write_json_atomic  # noqa: E402
from napari_dinoloc.core.segmentation import SegmentationParams  # noqa: E402

RANDOM_INIT = f"{CELL_MODEL} (random init)"
COMBINED = f"{CELL_MODEL}+classic"


def backbones(weights: str | None) -> dict:
    """name -> loaded backbone: the shipped model, its architecture with seeded random weights, random ViT-S/16."""
    if RANDOM_INIT not in BACKBONES:
        register_backbone(replace(BACKBONES[CELL_MODEL], name=RANDOM_INIT, source="random"))
    shipped = load_backbone(CELL_MODEL, weights=weights, device="cpu")
    return {CELL_MODEL: shipped, RANDOM_INIT: load_backbone(RANDOM_INIT, device="cpu"),
            "random (ViT-S/16)": load_backbone("random", device="cpu"),
            # the product's combined choice: deep and classic blocks, each z-scored (ClassicBackbone)
            COMBINED: ClassicBackbone(shipped)}


def deep_vectors(cells, backbone) -> np.ndarray:
    return np.concatenate([
        embed_cells(image, labels, backbone, EmbedSettings(crop_size=crop_size_for(table)), table=table).vectors
        for image, labels, table in zip(cells.images, cells.labels, cells.tables)])


def accuracy(cells, models: dict, folds: int, say, repeats: int = 1) -> dict:
    """Macro-F1 per feature set and head, averaged over ``repeats`` shufflings of the image folds."""
    fold_sets = [group_folds(cells.classes, cells.groups, folds, seed=seed) for seed in range(repeats)]
    sets = {}
    for name, backbone in models.items():
        start = time.perf_counter()
        if getattr(backbone, "is_classic", False):  # combined features: fit their scaler afresh on this set's first image
            backbone = ClassicBackbone(backbone.deep)
        sets[name] = deep_vectors(cells, backbone)
        say(f"  {name}: {sets[name].shape[1]} dims, {time.perf_counter() - start:.1f} s")
    sets["classic"] = classic_vectors(cells)
    results = {}
    for name, x in sets.items():
        for kind in HEADS:
            vectors = standardised_block(x) if kind == "knn" and name == "classic" else x
            scores = [cross_validated_f1(kind, vectors, cells.classes, splits)["macro_f1"] for splits in fold_sets]
            results[f"{name} | {kind}"] = float(np.mean(scores))
    return {"cells": len(cells.classes), "images": len(cells.images), "classes": len(set(cells.classes)),
            "folds": folds, "repeats": repeats, "chance": 1.0 / len(set(cells.classes)), "macro_f1": results}


def field_to_predictions(models: dict, size: int = 2048, seed: int = 3) -> dict:
    """Seconds from pixels to per-cell predictions on one field (the head trained on a third of the cells)."""
    from napari_dinoloc.core.demo import choose_annotated, ground_truth_classes
    from napari_dinoloc.core.images import make_cell_image
    from napari_dinoloc.core.pipeline import Session
    from napari_dinoloc.core.synthetic import make_field

    field = make_field(seed=seed, shape=(size, size))
    timings = {}
    for name, backbone in models.items():
        start = time.perf_counter()
        session = Session()
        session.set_image(make_cell_image(field.image, field.stains, name="speed"))
        session.set_labels(session.segment())
        session.set_backbone(backbone)
        session.set_embeddings(session.compute_embeddings(EmbedSettings(crop_size=crop_size_for(session.table))))
        truth = ground_truth_classes(session.labels, field.labels, field.cell_class)
        session.set_head(session.train_head("logistic", choose_annotated(truth, 0.3)))
        timings[name] = {"seconds": round(time.perf_counter() - start, 2), "cells": len(session.table)}
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--weights", help="weights of dinoloc-cells to judge (default: the packaged file)")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--max-cells", type=int, default=1500)
    parser.add_argument("--synthetic-seeds", type=int, default=8)
    parser.add_argument("--sets", default="synthetic,hpa")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--repeats", type=int, default=5, help="shufflings of the image folds, averaged")
    parser.add_argument("--hpa-border-cells", action="store_true",
                        help="keep HPA cells cut by the border (the composites are high-magnification: most cells touch it)")
    args = parser.parse_args()
    say = lambda text: print(text, flush=True)  # noqa: E731

    models = backbones(args.weights)
    loaders = {"synthetic": lambda: synthetic_cells(range(args.synthetic_seeds), 768, args.max_cells),
               "hpa": lambda: hpa_composite_cells(max_cells=args.max_cells, params=SegmentationParams(
                   keep_border_cells=args.hpa_border_cells))}
    report = {"command": " ".join(sys.argv), "weights": args.weights or "packaged",
              "weights_hash": models[CELL_MODEL].weights_hash, "sets": {}}
    for name in args.sets.split(","):
        cells = loaders[name]()
        say(f"{name}: {len(cells.classes)} cells, {len(cells.images)} images, {len(set(cells.classes))} classes")
        report["sets"][name] = accuracy(cells, models, args.folds, say, args.repeats)
    if not args.no_speed:
        report["field_2048_to_predictions"] = field_to_predictions(
            {CELL_MODEL: models[CELL_MODEL], "random (ViT-S/16)": models["random (ViT-S/16)"]})
    write_json_atomic(args.out, report)
    rows = list(next(iter(report["sets"].values()))["macro_f1"])
    print(f"\nmacro-F1 (pooled out-of-fold, {args.folds} folds split by image, mean of {args.repeats} shufflings)")
    print(f"{'features | head':<40}" + "".join(f"{s:>12}" for s in report["sets"]))
    for row in rows:
        print(f"{row:<40}" + "".join(f"{report['sets'][s]['macro_f1'][row]:>12.3f}" for s in report["sets"]))
    print(f"{'chance':<40}" + "".join(f"{report['sets'][s]['chance']:>12.3f}" for s in report["sets"]))
    for name, timing in report.get("field_2048_to_predictions", {}).items():
        print(f"2048² field to predictions, {name}: {timing['seconds']} s ({timing['cells']} cells)")


if __name__ == "__main__":
    main()
