"""Choose the best snapshot of a long pretraining run by a kNN probe on held-out synthetic cells.

DINO's loss does not say when features are good; a probe does. Each training checkpoint's teacher is
scored by cross-validated macro-F1 (kNN cosine and logistic heads, folds split by image) on synthetic
fields whose seeds the shipped-model benchmark never uses (100+), so choosing a snapshot here does not
tune on the benchmark's cells.

    PYTHONPATH=src python scripts/probe_checkpoints.py runs/snap-*.pth --out runs/probe.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_cell_model import deep_vectors  # noqa: E402
from bench_features import HEADS, cross_validated_f1, group_folds  # noqa: E402
from real_cells import synthetic_cells  # noqa: E402

from napari_dinoloc.core.backbones import CELL_MODEL, load_backbone  # noqa: E402
from napari_dinoloc.core.files import write_json_atomic  # noqa: E402
from napari_dinoloc.core.pretrain import export_checkpoint_teacher  # noqa: E402
from napari_dinoloc.core.pretrain.checkpoints import read_training_checkpoint  # noqa: E402


def score(cells, splits, backbone) -> dict:
    x = deep_vectors(cells, backbone)
    return {kind: round(cross_validated_f1(kind, x, cells.classes, splits)["macro_f1"], 4) for kind in HEADS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, default=6, help="synthetic fields (seeds 100, 101, ...)")
    args = parser.parse_args()
    cells = synthetic_cells(range(100, 100 + args.seeds), 768, 1200)
    splits = group_folds(cells.classes, cells.groups, 3)
    print(f"probe set: {len(cells.classes)} cells, {len(cells.images)} fields", flush=True)
    rows = {"packaged": score(cells, splits, load_backbone(CELL_MODEL, device="cpu"))}
    print("packaged", rows["packaged"], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.checkpoints:
            weights = Path(tmp) / (Path(path).stem + ".safetensors")
            export_checkpoint_teacher(path, weights)
            step = int(read_training_checkpoint(path)["step"])
            rows[path] = {"step": step, **score(cells, splits, load_backbone(CELL_MODEL, weights=str(weights), device="cpu"))}
            print(path, rows[path], flush=True)
    write_json_atomic(args.out, {"command": " ".join(sys.argv), "cells": len(cells.classes), "probe": rows})


if __name__ == "__main__":
    main()
