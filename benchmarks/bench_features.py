"""Classic features vs a ViT vs both, on real HPA composite cells and on synthetic fields.

Cross-validated macro-F1 with folds split by image (StratifiedGroupKFold: no image has cells on both
sides), the same folds for every feature set, with two heads: kNN (cosine, DINO4Cells) and logistic
regression (standardised features). The ViT runs with the default crop window (2 median cell
diameters of each image, ``EmbedSettings()``) and with the old fixed 224-px window.

    .venv/bin/python benchmarks/bench_features.py --out /tmp/features.json [--cache /tmp/emb-cache]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from real_cells import CellSet, hpa_composite_cells, synthetic_cells  # noqa: E402

from napari_dinoloc.core.classic import ClassicFeatures, combine  # noqa: E402
from napari_dinoloc.core.classic.extractor import standardised_block  # noqa: E402
from napari_dinoloc.core.evaluation import confusion_matrix, f1_from_confusion  # noqa: E402
from napari_dinoloc.core.files import write_json_atomic  # noqa: E402
from napari_dinoloc.core.heads import make_head  # noqa: E402
from napari_dinoloc.core.segmentation import SegmentationParams  # noqa: E402

HEADS = ("knn", "logistic")


def group_folds(classes: np.ndarray, groups: np.ndarray, folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedGroupKFold

    splits = list(StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(
        np.zeros(len(classes)), classes, groups))
    for train, test in splits:  # the point of grouping: say so loudly if it ever breaks
        assert not set(groups[train]) & set(groups[test]), "an image has cells on both sides of a split"
    return splits


def cross_validated_f1(kind: str, x: np.ndarray, classes: np.ndarray, splits) -> dict:
    names = tuple(sorted(set(classes)))
    y = np.searchsorted(names, classes)
    predicted = np.empty(len(y), dtype=np.int64)
    fold_f1 = []
    for train, test in splits:
        head = make_head(kind, names).fit_encoded(x[train], y[train], names)
        predicted[test] = head.predict_proba(x[test]).argmax(axis=1)
        present = np.unique(y[test])  # a fold's macro-F1 over the classes it holds
        fold_f1.append(float(f1_from_confusion(confusion_matrix(y[test], predicted[test], len(names)))[present].mean()))
    pooled = f1_from_confusion(confusion_matrix(y, predicted, len(names)))
    return {"macro_f1": float(pooled.mean()), "fold_macro_f1": fold_f1, "accuracy": float((predicted == y).mean())}


def classic_vectors(cells: CellSet) -> np.ndarray:
    extractor = ClassicFeatures()
    return np.concatenate([extractor.embed(image, labels, table).vectors
                           for image, labels, table in zip(cells.images, cells.labels, cells.tables)])


def vit_vectors(cells: CellSet, backbone, crop: str, cache) -> tuple[np.ndarray, list[int]]:
    from napari_dinoloc.core.embedding import EmbedSettings, embed_cells

    vectors, sizes = [], []
    for image, labels, table in zip(cells.images, cells.labels, cells.tables):
        settings = EmbedSettings() if crop == "fitted" else EmbedSettings(crop_size=224)  # default: 2 cell diameters
        sizes.append(settings.window_for(table, image.shape))
        vectors.append(embed_cells(image, labels, backbone, settings, cache=cache, table=table).vectors)
    return np.concatenate(vectors), sizes


def feature_sets(cells: CellSet, backbone, cache, say) -> tuple[dict[str, np.ndarray], dict]:
    info = {}
    start = time.perf_counter()
    classic = classic_vectors(cells)
    info["classic_seconds"] = round(time.perf_counter() - start, 1)
    say(f"  classic: {classic.shape[1]} features, {info['classic_seconds']} s")
    sets = {"classic": classic}
    for crop in ("fitted", "224"):
        start = time.perf_counter()
        deep, sizes = vit_vectors(cells, backbone, crop, cache)
        info[f"crop_{crop}_px"] = {"min": int(min(sizes)), "median": int(np.median(sizes)), "max": int(max(sizes))}
        info[f"vit_{crop}_seconds"] = round(time.perf_counter() - start, 1)
        say(f"  {backbone.name} crop {crop}: {info[f'crop_{crop}_px']} px, {info[f'vit_{crop}_seconds']} s")
        sets[f"{backbone.name} (crop {crop})"] = deep
        sets[f"{backbone.name}+classic (crop {crop})"] = combine(deep, classic)
    return sets, info


def run_set(name: str, cells: CellSet, backbone, folds: int, cache, say) -> dict:
    n_images = len(cells.images)
    say(f"{name}: {len(cells.classes)} cells, {n_images} images, {len(set(cells.classes))} classes")
    splits = group_folds(cells.classes, cells.groups, folds)
    sets, info = feature_sets(cells, backbone, cache, say)
    results = {}
    for feature_name, x in sets.items():
        for kind in HEADS:
            # kNN compares raw vectors; the classic block mixes units (pixels, fractions), so it is z-scored first
            vectors = standardised_block(x) if kind == "knn" and feature_name == "classic" else x
            results[f"{feature_name} | {kind}"] = cross_validated_f1(kind, vectors, cells.classes, splits)
    return {"cells": len(cells.classes), "images": n_images, "classes": len(set(cells.classes)), "folds": len(splits),
            "chance_macro_f1": 1.0 / len(set(cells.classes)), **info, "notes": cells.notes, "results": results}


def print_table(report: dict) -> None:
    set_names = list(report["sets"])
    rows = list(next(iter(report["sets"].values()))["results"])
    width = max(len(r) for r in rows) + 2
    print("\nmacro-F1 (pooled out-of-fold; folds split by image)")
    print("features | head".ljust(width) + "".join(f"{s:>22}" for s in set_names))
    for row in rows:
        print(row.ljust(width) + "".join(f"{report['sets'][s]['results'][row]['macro_f1']:>22.3f}" for s in set_names))
    print("chance".ljust(width) + "".join(f"{report['sets'][s]['chance_macro_f1']:>22.3f}" for s in set_names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--max-cells", type=int, default=1500, help="per set; whole images are dropped beyond it")
    parser.add_argument("--backbone", default="random")
    parser.add_argument("--synthetic-seeds", type=int, default=8)
    parser.add_argument("--synthetic-size", type=int, default=768)
    parser.add_argument("--hpa-nucleus-diameter", type=float, default=None,
                        help="segmentation size for the HPA composites (default: measured from each image)")
    parser.add_argument("--hpa-cell-diameter", type=float, default=None)
    parser.add_argument("--keep-border-cells", action="store_true",
                        help="keep cells cut by the image border (the composites show 1-4 cells, most of them cut)")
    parser.add_argument("--sets", default="hpa,synthetic")
    parser.add_argument("--cache", default=None, help="embedding cache folder (reruns skip the ViT)")
    args = parser.parse_args()

    from napari_dinoloc.core.backbones import load_backbone
    from napari_dinoloc.core.cache import EmbeddingCache

    say = lambda text: print(text, flush=True)  # noqa: E731
    cache = EmbeddingCache(args.cache) if args.cache else None
    backbone = load_backbone(args.backbone, device="cpu")
    params = SegmentationParams(args.hpa_nucleus_diameter, args.hpa_cell_diameter, keep_border_cells=args.keep_border_cells)
    loaders = {
        "hpa": lambda: hpa_composite_cells(max_cells=args.max_cells, params=params),
        "synthetic": lambda: synthetic_cells(range(args.synthetic_seeds), args.synthetic_size, args.max_cells),
    }
    report = {"command": " ".join(sys.argv), "backbone": args.backbone, "hpa_segmentation": {"nucleus_diameter": params.nucleus_diameter, "cell_diameter": params.cell_diameter, "keep_border_cells": params.keep_border_cells}, "sets": {}}
    start = time.perf_counter()
    for name in args.sets.split(","):
        report["sets"][name] = run_set(name, loaders[name](), backbone, args.folds, cache, say)
    report["seconds"] = round(time.perf_counter() - start, 1)
    write_json_atomic(args.out, report)
    print_table(report)
    print(f"\n{report['seconds']} s; JSON: {args.out}")


if __name__ == "__main__":
    main()
