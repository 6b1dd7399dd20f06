"""Fine-tuning: what it costs on this machine, and what it gains on the synthetic benchmark.

    .venv/bin/python benchmarks/bench_finetune.py                    # cost table, ViT-S/16, 100 cells
    .venv/bin/python benchmarks/bench_finetune.py --quick            # the same on 32 cells, 1 epoch
    .venv/bin/python benchmarks/bench_finetune.py --compare          # frozen + head vs fine-tuned, cross-validated
    .venv/bin/python benchmarks/bench_finetune.py --compare --quick  # a small check that it all runs

Cost (default): for the 'random' backbone (ViT-S/16 at 224 px with seeded random weights: the
architecture and cost of dino-vits16, no download) each level runs in its own process so that its
peak RSS is its own. Reported per 100 cells, wall and CPU seconds (the machine may be shared):
  head          embedding the cells once (forward only) + fitting the logistic head: a whole run;
  last-blocks   one training epoch (augment, forward, backward through the last 2 blocks, AdamW step);
  full          the same through every block (with --levels head,last-blocks,full).

Compare (--compare): synthetic fields (make_field, ground-truth cells and classes) and a small
random-init ViT registered here ('random-bench': 64 px input, patch 8, 96 dims, 4 blocks); stratified
k-fold cross-validation over all cells of the frozen backbone + logistic head against fine-tuning the
last 2 blocks + logistic head (compare_frozen_vs_finetuned: same folds, same head, same crops).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from napari_dinoloc.core.augment import augment_crops  # noqa: E402
from napari_dinoloc.core.backbones import BackboneSpec, load_backbone, register_backbone  # noqa: E402
from napari_dinoloc.core.embedding import EmbedSettings  # noqa: E402
from napari_dinoloc.core.finetune import (  # noqa: E402
    FinetuneSettings, Trainer, check_annotations, collect_annotated_cells, compare_frozen_vs_finetuned, finetune_cells,
)
from napari_dinoloc.core.images import make_cell_image  # noqa: E402
from napari_dinoloc.core.stains import RGB_SLOTS  # noqa: E402
from napari_dinoloc.core.synthetic import make_field  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import Clock, peak_rss_mb  # noqa: E402

BENCH_BACKBONE = BackboneSpec(
    name="random-bench", description="Small ViT with seeded random weights for the fine-tuning benchmark "
    "(patch 8, 96 dims, 4 blocks, 64 px).", paper="", source="random", arch=None, slots=RGB_SLOTS,
    normalization="imagenet", input_size=64, patch_size=8,
    arch_kwargs={"img_size": 64, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3},
)


def synthetic_images(n_fields: int, size: int, seed: int = 100):
    """(CellImage, ground-truth labels, ground-truth classes) per field."""
    for index in range(n_fields):
        field = make_field(seed=seed + index, shape=(size, size))
        yield make_cell_image(field.image, field.stains, name=f"field_{index}"), field.labels, dict(field.cell_class)


# ---- cost -------------------------------------------------------------------------------------
def cost_of_level(level: str, n_cells: int, epochs: int, backbone_name: str, crop: int) -> dict:
    """Seconds per 100 cells for one level, measured in this process."""
    backbone = load_backbone(backbone_name, device="cpu")
    embed = EmbedSettings(crop_size=crop, device="cpu").resolved(backbone)
    cells = collect_annotated_cells(synthetic_images(4, 768, seed=0), embed)
    cells = cells.subset(np.arange(min(n_cells, len(cells))))
    if level == "head":
        with Clock() as clock:
            finetune_cells(cells, backbone, embed, FinetuneSettings(level="head"))
        per_100 = 100 / len(cells)
        return {"level": level, "cells": len(cells), "wall": clock.wall * per_100, "cpu": clock.cpu * per_100,
                "what": "run (embed + head)", "rss_mb": peak_rss_mb()}
    return cost_of_training(level, cells, backbone, embed, epochs)


def cost_of_training(level: str, cells, backbone, embed, epochs: int) -> dict:
    class_names, y = check_annotations(cells, min_cells=1)
    settings = FinetuneSettings(level=level, blocks=2, batch_size=32, max_batch=32)
    trainer = Trainer(backbone, embed, settings, cells, y, class_names)
    rows = np.arange(len(cells))
    generator = torch.Generator().manual_seed(0)
    with Clock() as setup:
        trainer.init_classifier(rows, generator)  # one forward pass over the cells (the linear probe)
    trainer.build_optimiser(steps_per_epoch=int(np.ceil(len(rows) / settings.batch_size)))
    times = [train_one_epoch(trainer, rows, y, generator) for _ in range(epochs)]
    wall, cpu = min(t[0] for t in times), min(t[1] for t in times)
    per_100 = 100 / len(cells)
    return {"level": level, "cells": len(cells), "wall": wall * per_100, "cpu": cpu * per_100, "what": "epoch",
            "probe_wall": setup.wall * per_100, "rss_mb": peak_rss_mb()}


def train_one_epoch(trainer, rows, y, generator) -> tuple[float, float]:
    """Augment + optimiser steps over ``rows`` (no validation pass): the training cost of one epoch."""
    trainer.backbone.model.train()
    order = rows[torch.randperm(len(rows), generator=generator).numpy()]
    with Clock() as clock:
        for start in range(0, len(order), trainer.settings.batch_size):
            batch = order[start:start + trainer.settings.batch_size]
            crops = augment_crops(torch.from_numpy(trainer.cells.crops[batch]), trainer.cells.stains,
                                  trainer.settings.augment, generator)
            trainer.step(crops.numpy(), torch.from_numpy(y[batch]))
    return clock.wall, clock.cpu


def run_costs(args) -> None:
    print(f"cost on this CPU: backbone {args.backbone}, {args.cells} cells, crop {args.crop} px, torch threads "
          f"{torch.get_num_threads()}, best of {args.epochs} epoch(s); each level in its own process", flush=True)
    rows = []
    for level in args.levels.split(","):
        command = [sys.executable, __file__, "--one", level, "--cells", str(args.cells), "--epochs", str(args.epochs),
                   "--backbone", args.backbone, "--crop", str(args.crop)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
        print(f"  {level}: done", flush=True)
    print(f"\n{'level':<12} {'per 100 cells':<20} {'wall s':>8} {'CPU s':>8} {'probe wall s':>13} {'peak RSS MB':>12}")
    for row in rows:
        probe = f"{row['probe_wall']:.1f}" if "probe_wall" in row else "-"
        print(f"{row['level']:<12} {row['what']:<20} {row['wall']:>8.1f} {row['cpu']:>8.1f} {probe:>13} {row['rss_mb']:>12.0f}")


# ---- frozen vs fine-tuned --------------------------------------------------------------------
def run_compare(args) -> None:
    register_backbone(BENCH_BACKBONE)
    backbone = load_backbone(args.compare_backbone, device="cpu")
    embed = EmbedSettings(crop_size=args.compare_crop, device="cpu")
    settings = FinetuneSettings(level="last-blocks", blocks=2, epochs=args.compare_epochs, lr=args.lr, head_lr=args.head_lr,
                                batch_size=16, max_batch=16, patience=args.patience, seed=0)
    print(f"synthetic benchmark: {args.fields} fields {args.field_size}x{args.field_size}, backbone "
          f"{backbone.name} ({backbone.spec.input_size} px, {backbone.embed_dim} dims, {len(backbone.model.blocks)} blocks), "
          f"crop {args.compare_crop} px; {args.folds}-fold CV; fine-tuning: {settings}", flush=True)
    with Clock() as clock:
        comparison = compare_frozen_vs_finetuned(synthetic_images(args.fields, args.field_size), backbone, embed, settings,
                                                 folds=args.folds, seed=0)
    print(f"\n{comparison.format_table()}")
    print(f"cells {comparison.frozen.n_cells}, classes {len(comparison.frozen.class_names)}; "
          f"wall {clock.wall:.0f} s (frozen {comparison.seconds['frozen']:.0f} s, fine-tuned {comparison.seconds['finetuned']:.0f} s)")
    print("per-class F1 (frozen -> fine-tuned):")
    for name in comparison.frozen.class_names:
        print(f"  {name:<18} {comparison.frozen.per_class_f1[name]:.3f} -> {comparison.finetuned.per_class_f1[name]:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(comparison.to_dict(), indent=2), encoding="utf-8")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="cost: 32 cells, 1 epoch; compare: 3 small fields, 2 folds, 3 epochs")
    parser.add_argument("--backbone", default="random", help="cost: backbone entry (random = ViT-S/16)")
    parser.add_argument("--cells", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=2, help="cost: epochs timed per level (the best is reported)")
    parser.add_argument("--crop", type=int, default=64, help="crop size in pixels (resized to the backbone's input)")
    parser.add_argument("--levels", default="head,last-blocks")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one level in this process
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--compare-backbone", default="random-bench")
    parser.add_argument("--compare-crop", type=int, default=64)
    parser.add_argument("--fields", type=int, default=6)
    parser.add_argument("--field-size", type=int, default=512)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--compare-epochs", type=int, default=20)
    parser.add_argument("--patience", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3, help="random-init weights need more than the 1e-4 default")
    parser.add_argument("--head-lr", type=float, default=1e-2)
    parser.add_argument("--json", help="compare: also write the comparison as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.cells, args.epochs = 32, 1
        args.fields, args.field_size, args.folds, args.compare_epochs = 3, 384, 2, 3
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(cost_of_level(args.one, args.cells, args.epochs, args.backbone, args.crop)))
    elif args.compare:
        run_compare(args)
    else:
        run_costs(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
