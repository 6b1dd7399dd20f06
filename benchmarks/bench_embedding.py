"""Throughput of the embedding engine against the bare model and a naive per-cell loop.

    .venv/bin/python benchmarks/bench_embedding.py            # full: 2048x2048 field, fp32 + bf16
    .venv/bin/python benchmarks/bench_embedding.py --quick    # a small check that it all runs

For each precision it prints cells/s of
  engine  embed_cells on a synthetic field (crop + mask + normalise + embed, batched, prefetched),
  bare    the model's forward on ready tensors, same batch size and precision,
  naive   a per-cell loop: crop, normalise, forward with batch 1 in fp32,
their ratios, the precision the engine actually used (after its fp32 agreement check), the peak
RSS, and the seconds to embed every cell of the field. Default backbone 'random': ViT-S/16 at 224 px,
the architecture and cost of dino-vits16, so no download is needed.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from napari_dinoloc.core.backbones import load_backbone, normalize  # noqa: E402
from napari_dinoloc.core.devices import autocast_dtype  # noqa: E402
from napari_dinoloc.core.crops import iter_cell_crops  # noqa: E402
from napari_dinoloc.core.embedding import Embedder, EmbedSettings, embed_cells  # noqa: E402
from napari_dinoloc.core.images import make_cell_image  # noqa: E402
from napari_dinoloc.core.segmentation import CellTable  # noqa: E402
from napari_dinoloc.core.synthetic import make_field  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import Clock, peak_rss_mb  # noqa: E402


def autocast_context(device, precision):
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


def ready_batches(backbone, image, labels, table, batch_size: int, batches: int) -> list:
    """The engine's own prepared inputs (cropped, masked, mapped, normalised), made before timing."""
    embedder = Embedder(backbone, EmbedSettings(batch_size=batch_size, precision="fp32"))
    crops = iter_cell_crops(image, labels, table, embedder.settings.crop_size, True, batch_size)
    return [embedder.prepare(batch, image.stains).inputs.to(backbone.device)
            for _, (_, batch) in zip(range(batches), crops)]


def preparation_rate(backbone, image, labels, table, batch_size: int) -> tuple[float, float]:
    """Cells/s of everything the engine does besides the forward pass (crop, mask, map, normalise),
    on one thread as in the engine's crop thread."""
    embedder = Embedder(backbone, EmbedSettings(batch_size=batch_size, precision="fp32"))
    clock = Clock()

    def prepare_all():
        torch.set_num_threads(1)  # per thread: the main thread keeps its setting
        with clock:
            for _, crops in iter_cell_crops(image, labels, table, embedder.settings.crop_size, True, batch_size):
                embedder.prepare(crops, image.stains)

    worker = threading.Thread(target=prepare_all)
    worker.start()
    worker.join()
    return clock.rates(len(table))


def bare_forward_rate(backbone, inputs: list, precision: str) -> tuple[float, float]:
    """Cells/s of forward_features + CLS on tensors already prepared and on the device."""
    with torch.inference_mode(), autocast_context(backbone.device, precision):
        backbone.tokens(inputs[0])[:, 0].float().cpu()  # warm-up
        with Clock() as clock:
            for x in inputs:
                backbone.tokens(x)[:, 0].float().cpu()
    return clock.rates(sum(len(x) for x in inputs))


def naive_loop_rate(backbone, image, labels, table, cells: int) -> tuple[float, float]:
    """Cells/s of the obvious implementation: one cell at a time, fp32, crop with np.pad."""
    size = backbone.spec.input_size
    half = size // 2
    padded = np.pad(image.data, ((0, 0), (half, half), (half, half)))
    padded_labels = np.pad(labels, ((half, half), (half, half)))
    with torch.inference_mode(), Clock() as clock:
        for i in range(cells):
            y, x = int(round(table.centroid_y[i])), int(round(table.centroid_x[i]))
            crop = padded[:, y:y + size, x:x + size] * (padded_labels[y:y + size, x:x + size] == table.label[i])
            rgb = torch.zeros(1, 3, size, size)
            rgb[0, 1], rgb[0, 2] = torch.from_numpy(crop[1]), torch.from_numpy(crop[0])  # protein G, nucleus B
            backbone.tokens(normalize(rgb, backbone.spec))[:, 0].numpy()
    return clock.rates(cells)


def engine_run(backbone, image, labels, table, batch_size: int, precision: str):
    settings = EmbedSettings(batch_size=batch_size, precision=precision, device=str(backbone.device))
    with Clock() as clock:
        result = embed_cells(image, labels, backbone, settings, table=table)
    return clock.rates(len(result)), clock.wall, result


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def first_cells(labels: np.ndarray, count: int) -> np.ndarray:
    return np.where(labels <= count, labels, 0).astype(np.int32) if count else labels


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="random")
    parser.add_argument("--field-size", type=int, default=2048, help="side of the synthetic field (pixels)")
    parser.add_argument("--engine-cells", type=int, default=256, help="cells per engine run in the comparison")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bare-batches", type=int, default=4)
    parser.add_argument("--naive-cells", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repeats; the best of each is reported "
                                                              "(the machine may be shared)")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-full-field", action="store_true", help="skip timing every cell of the field")
    parser.add_argument("--quick", action="store_true",
                        help="512 px field, 32 cells, batch 16, 1 round, 2 bare batches, 4 naive cells")
    args = parser.parse_args(argv)
    if args.quick:
        args.field_size, args.engine_cells, args.batch_size = 512, 32, 16
        args.rounds, args.bare_batches, args.naive_cells = 1, 2, 4
    return args


def keep_best(best: dict, key, rates: tuple[float, float]) -> None:
    old = best.get(key, (0.0, 0.0))
    best[key] = (max(old[0], rates[0]), max(old[1], rates[1]))


def compare(args, backbone, image, labels, table) -> dict:
    """Interleaved rounds of naive / bare / engine per precision; best wall and CPU rate of each."""
    subset = first_cells(labels, args.engine_cells)
    subset_table = CellTable.from_labels(subset)
    best: dict = {}
    used, vectors = {}, {}
    inputs = ready_batches(backbone, image, subset, subset_table, args.batch_size, args.bare_batches)
    best["prepare"] = preparation_rate(backbone, image, subset, subset_table, args.batch_size)
    for round_ in range(args.rounds):
        naive = naive_loop_rate(backbone, image, labels, table, min(args.naive_cells, len(table)))
        keep_best(best, "naive", naive)
        for precision in args.precisions.split(","):
            bare = bare_forward_rate(backbone, inputs, precision)
            engine, _, result = engine_run(backbone, image, subset, subset_table, args.batch_size, precision)
            keep_best(best, ("bare", precision), bare)
            keep_best(best, ("engine", precision), engine)
            used[precision], vectors[precision] = result.signature["precision_used"], result.vectors
            print(f"  round {round_ + 1} [{precision}] cells/s (wall | per CPU-s): naive {naive[0]:.2f} | {naive[1]:.2f}  "
                  f"bare {bare[0]:.2f} | {bare[1]:.2f}  engine {engine[0]:.2f} | {engine[1]:.2f}", flush=True)
    return {"best": best, "used": used, "vectors": vectors, "cells": len(subset_table)}


def report_comparison(args, outcome) -> None:
    best = outcome["best"]
    naive = best["naive"]
    precisions = args.precisions.split(",")
    print(f"best of {args.rounds} round(s), cells/s as wall | per CPU-second")
    print(f"crop + mask + map + normalise alone (no model): {best['prepare'][0]:.1f} | {best['prepare'][1]:.1f}")
    print(f"naive per-cell loop (batch 1, fp32): {naive[0]:.2f} | {naive[1]:.2f}")
    for precision in precisions:
        engine, bare = best[("engine", precision)], best[("bare", precision)]
        agreement = ""
        if precision != precisions[0]:
            cos = cosine_rows(outcome["vectors"][precisions[0]], outcome["vectors"][precision]).min()
            agreement = f", min cosine to {precisions[0]} {cos:.5f}"
        print(f"[{precision}] engine {engine[0]:.2f} | {engine[1]:.2f} (ran in {outcome['used'][precision]}{agreement}); "
              f"bare forward {bare[0]:.2f} | {bare[1]:.2f}; engine/bare {engine[0] / bare[0]:.2f} | {engine[1] / bare[1]:.2f}; "
              f"engine/naive {engine[0] / naive[0]:.2f} | {engine[1] / naive[1]:.2f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    backbone = load_backbone(args.backbone, device=args.device)
    start = time.perf_counter()
    field = make_field(seed=0, shape=(args.field_size, args.field_size))
    image = make_cell_image(field.image, field.stains, name="synthetic")
    table = CellTable.from_labels(field.labels)
    print(f"backbone {backbone.name} ({backbone.spec.input_size} px, {backbone.embed_dim} dims) on {backbone.device}, "
          f"torch threads {torch.get_num_threads()}; field {args.field_size}x{args.field_size} with {len(table)} cells "
          f"(made in {time.perf_counter() - start:.1f} s); batch {args.batch_size}; comparison on "
          f"{min(args.engine_cells, len(table))} cells, best of {args.rounds} round(s)", flush=True)
    report_comparison(args, compare(args, backbone, image, field.labels, table))
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    if not args.no_full_field:
        _, seconds, result = engine_run(backbone, image, field.labels, table, args.batch_size, "auto")
        print(f"whole {args.field_size}x{args.field_size} field: {len(result)} cells embedded in {seconds:.1f} s "
              f"(precision auto -> {result.signature['precision_used']}); peak RSS {peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
