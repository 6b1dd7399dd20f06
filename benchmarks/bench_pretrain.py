"""DINO pretraining: throughput and memory on this machine, and what pretraining buys on synthetic cells.

    PYTHONPATH=src python benchmarks/bench_pretrain.py                      # both parts
    PYTHONPATH=src python benchmarks/bench_pretrain.py --weights model.safetensors   # probe a trained model
    PYTHONPATH=src python benchmarks/bench_pretrain.py --skip-probe --steps 3

Throughput: the shipped architecture (dinoloc-cells: ViT 192 dims, 6 blocks, patch 8, 64 px), 2 global
64-px + N local 32-px views, full training steps (views, student and teacher, loss, AdamW, EMA) in fp32 and
in bf16 autocast, each in its own process so that its peak RSS is its own. Crops/s counts cells (each
with all its views) per second of wall time and per CPU-second.

Probe: cells of synthetic fields (ground-truth cells and classes), CLS features of the model, kNN
(cosine, k 10) macro-F1 cross-validated with folds split by field, for the trained weights given
(safetensors or a training checkpoint) against the same architecture's random initialisation.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import Clock, peak_rss_mb  # noqa: E402


def one_precision(precision: str, steps: int, batch: int, local_views: int) -> dict:
    import torch

    from napari_dinoloc.core.pretrain import CELL_MODEL_SPEC, DinoRun, PretrainCells, PretrainSettings, ViewSettings, build_vit

    cells = PretrainCells.from_fields(range(4), shape=(512, 512), size=96)
    settings = PretrainSettings(batch_size=batch, out_dim=1024, precision=precision, device="cpu",
                                views=ViewSettings(global_size=64, local_size=32, n_local=local_views))
    run = DinoRun(cells, settings, CELL_MODEL_SPEC, build_vit(CELL_MODEL_SPEC), torch.device("cpu"))
    run.precision = precision
    run.plan(1000)
    run.train_step()  # warm-up
    with Clock() as clock:
        for _ in range(steps):
            run.train_step()
    wall, cpu = clock.rates(steps * run.batch_size)
    return {"precision": precision, "crops_per_s": round(wall, 2), "crops_per_cpu_s": round(cpu, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1), "threads": torch.get_num_threads(), "batch": run.batch_size,
            "views": 2 + local_views}


def throughput(args) -> list[dict]:
    """Best of ``--repeats`` interleaved runs per precision: on a shared CPU single timings vary several-fold."""
    best: dict[str, dict] = {}
    for _ in range(args.repeats):
        for precision in ("fp32", "bf16"):
            out = subprocess.run([sys.executable, __file__, "--one", precision, "--steps", str(args.steps), "--batch",
                                  str(args.batch), "--local-views", str(args.local_views)],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            if precision not in best or row["crops_per_cpu_s"] > best[precision]["crops_per_cpu_s"]:
                best[precision] = row
    return [best["fp32"], best["bf16"]]


def features(model, crops) -> np.ndarray:
    import torch

    from napari_dinoloc.core.backbones import normalize
    from napari_dinoloc.core.pretrain import CELL_MODEL_SPEC
    from napari_dinoloc.core.pretrain.views import to_float

    out = []
    with torch.no_grad():
        for start in range(0, len(crops), 128):
            x = to_float(crops[start:start + 128])
            x = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
            out.append(model.eval()(normalize(x, CELL_MODEL_SPEC)).numpy())
    return np.concatenate(out)


def knn_macro_f1(vectors: np.ndarray, classes: list[str], groups: np.ndarray, folds: int = 4) -> float:
    from sklearn.metrics import f1_score
    from sklearn.model_selection import GroupKFold
    from sklearn.neighbors import KNeighborsClassifier

    y = np.asarray(classes)
    predicted = np.empty_like(y)
    for train, test in GroupKFold(n_splits=folds).split(vectors, y, groups):
        knn = KNeighborsClassifier(n_neighbors=10, metric="cosine", weights="distance").fit(vectors[train], y[train])
        predicted[test] = knn.predict(vectors[test])
    return float(f1_score(y, predicted, average="macro"))


def load_trained(path: Path):
    from napari_dinoloc.core.backbones import read_checkpoint
    from napari_dinoloc.core.pretrain import CELL_MODEL_SPEC, build_vit

    model = build_vit(CELL_MODEL_SPEC)
    model.load_state_dict(read_checkpoint(path))  # safetensors or a training checkpoint (its teacher)
    return model


def probe(args) -> dict:
    from napari_dinoloc.core.pretrain import CELL_MODEL_SPEC, PretrainCells, build_vit

    cells = PretrainCells.from_fields(range(500, 500 + args.fields), shape=(512, 512), size=96)
    crops = cells.batch(np.arange(len(cells)))  # stored as (protein, nucleus): the model's slots
    groups = cells.image_of
    result = {"cells": len(cells), "fields": args.fields, "classes": len(set(cells.classes))}
    with Clock() as clock:
        result["random_init"] = round(knn_macro_f1(features(build_vit(CELL_MODEL_SPEC), crops), cells.classes, groups), 4)
    result["embed_cells_per_s"] = round(len(cells) / clock.wall, 1)
    if args.weights:
        trained = knn_macro_f1(features(load_trained(Path(args.weights)), crops), cells.classes, groups)
        result["trained"] = round(trained, 4)
        result["trained_minus_random"] = round(trained - result["random_init"], 4)
        result["weights"] = str(args.weights)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--local-views", type=int, default=4)
    parser.add_argument("--fields", type=int, default=8)
    parser.add_argument("--weights", help="trained weights of the shipped architecture (safetensors or checkpoint)")
    parser.add_argument("--skip-probe", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_precision(args.one, args.steps, args.batch, args.local_views)))
        return 0
    if not args.skip_throughput:
        rows = throughput(args)
        for row in rows:
            print(json.dumps(row))
        fp32, bf16 = rows
        print(json.dumps({"bf16_over_fp32_speed": round(bf16["crops_per_s"] / fp32["crops_per_s"], 3),
                          "bf16_over_fp32_per_cpu_s": round(bf16["crops_per_cpu_s"] / fp32["crops_per_cpu_s"], 3)}))
    if not args.skip_probe:
        print(json.dumps(probe(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
