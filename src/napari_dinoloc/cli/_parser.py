"""Every option of ``dinoloc``: names, choices and defaults come from the engine's registries and settings."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import __version__
from ..core import defaults

FORMATTER = argparse.ArgumentDefaultsHelpFormatter  # --help shows every default


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as the one ``dinoloc: error:`` line (exit 2) of every other error."""

    def error(self, message: str):
        self.exit(2, f"dinoloc: error: {message} (see {self.prog} --help).\n")


class StoreGiven(argparse.Action):
    """Store the value and remember that the user gave it (``<dest>_given``), unlike a default."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


def fail_fast_option(parser) -> None:
    parser.add_argument("--fail-fast", action="store_true",
                        help="stop at the first image that cannot be used (default: skip it, list it at the end, exit 3)")


def screen_options(parser) -> None:
    """Many images: on a Dask cluster, one shard per image in <out>.shards/, resumed by running the same command."""
    group = parser.add_argument_group("screens (docs/screens.md)")
    group.add_argument("--workers", type=positive_int, default=None, metavar="N",
                       help="run on a Dask cluster of N worker processes on this machine (default: one process, "
                            "no Dask); images may then also be a CSV manifest or folders")
    group.add_argument("--scheduler", metavar="ADDRESS", help="run on an existing Dask cluster (tcp://host:8786)")
    group.add_argument("--tile", type=non_negative_int, default=defaults.SCREEN_TILE, metavar="PIXELS", action=StoreGiven,
                       help="cut images larger than PIXELS on a side into overlapping tiles, one task and shard each, "
                            "cells in full-image coordinates and ids (0: never tile); given, it implies a screen run")


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive whole number")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or a positive whole number")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def diameter(text: str) -> float | None:
    """A diameter in pixels, or ``auto`` (None: measured from the image)."""
    if text.strip().lower() == "auto":
        return None
    return positive_float(text)


def image_options() -> argparse.ArgumentParser:
    from ..core.segmentation import ALL_STAINS, NO_CELL_STAIN
    from ..core.stains import ER, MICROTUBULES, OTHER

    parser = Parser(add_help=False, formatter_class=FORMATTER)
    parser.add_argument("images", nargs="+", type=Path, help="image files or folders of them (TIFF, OME-TIFF, PNG, JPEG; <name>_labels files in a folder are skipped; HPA <id>_<colour>.png files are grouped per id, "
                        "Cell Painting <site>-chN... files per site)")
    parser.add_argument("--channels", help="stain of each channel, e.g. protein=1,nucleus=0 (stains: protein, nucleus, microtubules, er, "
                        "Cell Painting dna, rna, agp, mito; other)")
    parser.add_argument("--channel-axis", type=int, help="axis of the channels when it cannot be detected")
    parser.add_argument("--labels", nargs="+", type=Path, default=[], help="label images with the cells (one per image, same order); default: segment")
    parser.add_argument("--nucleus-diameter", type=diameter, default=None, metavar="PX|auto",
                        help="typical nucleus diameter in pixels (default auto: measured from the nucleus stain)")
    parser.add_argument("--cell-diameter", type=diameter, default=None, metavar="PX|auto",
                        help="largest cell diameter in pixels (default: twice the nucleus diameter)")
    parser.add_argument("--pixel-size", type=positive_float, help="µm per pixel, so that sizes can be given in µm")
    parser.add_argument("--nucleus-diameter-um", type=positive_float, help="nucleus diameter in µm (needs --pixel-size)")
    parser.add_argument("--cell-diameter-um", type=positive_float, help="cell diameter in µm (needs --pixel-size)")
    parser.add_argument("--cell-stain", choices=[MICROTUBULES, ER, OTHER, ALL_STAINS, NO_CELL_STAIN],
                        help="stain the cell outlines come from, never the protein (default: microtubules, er, then "
                             "another non-nucleus stain; all: every non-protein stain; none: a ring around each nucleus)")
    parser.add_argument("--segmenter", choices=["builtin", "cellpose"], default="builtin",
                        help="cell outlines: the built-in watershed, or Cellpose (pip install cellpose) on the cell and nucleus stains")
    parser.add_argument("--crops", action="store_true",
                        help="the images are single-cell crops: a folder of crop files (classes from sub-folder names) "
                             "or a stack file (N, C, H, W) in .tif or .npy; --annotations may then be the crop folder "
                             "or a CSV with columns file,class")
    parser.add_argument("--crop-mask", choices=["whole", "foreground"], default="whole",
                        help="with --crops: the cell is the whole crop, or its foreground (Otsu)")
    parser.add_argument("--keep-border-cells", action="store_true", help="keep cells cut by the image border (default: dropped, counted)")
    return parser


def model_options() -> argparse.ArgumentParser:
    from ..core.classic import feature_choices
    from ..core.devices import DEVICE_CHOICES, PRECISIONS
    from ..core.embedding import EMBEDDING_TYPES, EmbedSettings
    from ..core.strategies import STRATEGIES

    d = EmbedSettings()
    parser = Parser(add_help=False, formatter_class=FORMATTER)
    from ..core.backbones import BACKBONES

    parser.add_argument("--backbone", default=defaults.FEATURES, choices=feature_choices(), metavar="NAME", action=StoreGiven,
                        help=f"backbone: {', '.join(BACKBONES.names())}; classic: hand-crafted features; NAME+classic: "
                             "both, each block standardised (dinoloc backbones describes them)")
    parser.add_argument("--weights", type=Path, help="local weights file (DINO checkpoint, .pth state dict or .safetensors)")
    parser.add_argument("--strategy", default=d.strategy, choices=STRATEGIES.names(), help="how the stains enter the backbone")
    parser.add_argument("--embedding", default=d.embedding, choices=EMBEDDING_TYPES)
    parser.add_argument("--crop-size", type=positive_int, help="fixed crop size in image pixels (default: --crop-cells median cell diameters)")
    parser.add_argument("--crop-cells", type=positive_float, default=d.crop_cells,
                        help="without --crop-size: the crop window in median cell diameters of each image")
    parser.add_argument("--input-size", type=positive_int, help="size crops are resized to (default: the backbone's)")
    parser.add_argument("--keep-background", action="store_true", help="keep pixels outside the cell instead of zeroing them")
    parser.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    parser.add_argument("--device", default=d.device, choices=DEVICE_CHOICES)
    parser.add_argument("--precision", default=d.precision, choices=PRECISIONS)
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    return parser


def head_option(parser, help: str = "classifier trained on the embeddings") -> None:
    from ..core.heads import HEADS

    parser.add_argument("--head", default=HEADS.default, choices=HEADS.names(), help=help)


def training_options(parser: argparse.ArgumentParser) -> None:
    """Fine-tuning options, shared by ``finetune`` and ``evaluate --finetune``."""
    from ..core.finetune import LEVELS, FinetuneSettings

    d = FinetuneSettings()
    group = parser.add_argument_group("fine-tuning")
    group.add_argument("--level", choices=LEVELS, default=d.level,
                       help="head: frozen backbone; last-blocks: the last --blocks blocks; full: all, layer-wise lr decay")
    group.add_argument("--blocks", type=positive_int, default=d.blocks, help="blocks trained at level last-blocks")
    group.add_argument("--epochs", type=positive_int, default=d.epochs, help="at most this many epochs (early stopping)")
    group.add_argument("--lr", type=positive_float, default=d.lr, help="backbone learning rate")
    group.add_argument("--head-lr", type=positive_float, default=d.head_lr, help="learning rate of the classifier trained with it")
    group.add_argument("--layer-decay", type=positive_float, default=d.layer_decay, help="level full: lr factor per block from the top")
    group.add_argument("--train-batch", type=positive_int, default=d.batch_size, help="cells per optimiser step")
    group.add_argument("--max-batch", type=positive_int, default=d.max_batch,
                       help="cells per forward pass (gradients accumulate above it; halved on out-of-memory)")
    group.add_argument("--val-fraction", type=float, default=d.val_fraction, help="share of annotated cells for validation")
    group.add_argument("--patience", type=positive_int, default=d.patience, help="epochs without a better validation F1 before stopping")
    group.add_argument("--no-augment", action="store_true", help="train without the Cell-DINO augmentations")


def pretrain_options(parser: argparse.ArgumentParser) -> None:
    """``dinoloc pretrain``: budget, starting point, files, and how to run."""
    from ..core.devices import DEVICE_CHOICES
    from ..core.pretrain.settings import PRECISION_CHOICES
    from ..core.workflows.pretraining import SCRATCH, START_HELP, base_settings

    d = base_settings()
    parser.add_argument("--out", type=Path, required=True,
                        help="training checkpoint to write (.pth; its teacher backbone goes beside it as .safetensors)")
    parser.add_argument("--minutes", type=positive_float, help="stop after this many minutes (a checkpoint is kept)")
    parser.add_argument("--epochs", type=positive_float, help=f"epochs the schedules plan for (default {d.epochs:g} "
                        "unless only --minutes is given)")
    parser.add_argument("--start", default=SCRATCH, metavar="FROM",
                        help=f"{'; '.join(f'{k}: {v}' for k, v in START_HELP.items())}; or a backbone name, "
                             "or a checkpoint file")
    parser.add_argument("--weights", type=Path, help="weights file for the --start backbone")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out (same images)")
    parser.add_argument("--checkpoint-minutes", type=positive_float, default=d.checkpoint_minutes,
                        help="write the checkpoint this often")
    parser.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="cells per DINO step")
    parser.add_argument("--device", default=d.device, choices=DEVICE_CHOICES)
    parser.add_argument("--precision", default=d.precision, choices=PRECISION_CHOICES,
                        help="auto: measured on CPU, bf16 on CUDA")
    parser.add_argument("--crop-cache", type=Path, help="folder of the cell crop cache (default: in the user cache folder)")


def extra_output_options(parser) -> None:
    """``--parquet`` / ``--zarr`` / ``--h5ad``: the same cells for other tools (pip install napari-dinoloc[screen])."""
    group = parser.add_argument_group("outputs for other tools (docs/screens.md)")
    group.add_argument("--parquet", type=Path, metavar="FOLDER",
                       help="also the per-cell table as a Parquet dataset, partitioned by plate and image")
    group.add_argument("--zarr", type=Path, metavar="FOLDER", help="also the embeddings as a Zarr group (chunked by cells)")
    group.add_argument("--h5ad", type=Path, metavar="FILE",
                       help="also an AnnData file for scanpy: cells (obs), class probabilities (X), embeddings (obsm)")


def aggregate_options(parser) -> None:
    from ..core.screen.profiles import METHODS

    parser.add_argument("source", type=Path, metavar="RUN_OR_TABLE",
                        help="an .h5ad, a Parquet table or per-cell CSV (with --embeddings), or a run folder holding them")
    parser.add_argument("--embeddings", type=Path, help="the cells' embeddings (.npz or .zarr), matched by image and label")
    parser.add_argument("--by", default="plate,well", help="columns that make one profile, comma separated (e.g. image)")
    parser.add_argument("--controls", metavar="COLUMN=VALUE[,VALUE]",
                        help="control wells (e.g. compound=DMSO): profiles centred and scaled on them, per plate")
    parser.add_argument("--method", choices=METHODS, default=METHODS[0], help="how the cells' embeddings are summarised")
    parser.add_argument("--no-scale", action="store_true", help="with --controls: centre only, do not divide by their spread")
    parser.add_argument("--sphere", action="store_true",
                        help="with --controls: also whiten the profiles with a PCA fitted on the control profiles")
    parser.add_argument("--out", type=Path, required=True, help="profiles table to write (.csv, or .parquet)")


def point(text: str) -> tuple[float, float]:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError("write the point as Y,X in image pixels, e.g. 120,340")
    return float(parts[0]), float(parts[1])


def box(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError("write the region as Y0,X0,Y1,X1 in image pixels")
    return tuple(int(p) for p in parts)


def patch_map_options(parser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="TIFF to write, aligned with the image")
    parser.add_argument("--similar-to", type=point, metavar="Y,X",
                        help="instead of PCA colours: cosine similarity of every patch to the patch at this pixel")
    parser.add_argument("--region", type=box, metavar="Y0,X0,Y1,X1", help="part of the image (default: all of it)")
    parser.add_argument("--patches", type=positive_int, help="patches along the longer side of the region "
                        "(default: twice the backbone's grid)")


def build_parser() -> argparse.ArgumentParser:
    from ..core.classic import feature_choices

    parser = Parser(prog="dinoloc", description="Per-cell protein localization with self-supervised ViTs.",
                                     formatter_class=FORMATTER)
    parser.add_argument("--version", action="version", version=f"napari-dinoloc {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of unexpected errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    images, model = image_options(), model_options()

    def add(name, help, parents=()):
        return commands.add_parser(name, parents=list(parents), help=help, formatter_class=FORMATTER)

    sample = add("sample", "write synthetic fields of view with ground truth")
    sample.add_argument("outdir", type=Path)
    sample.add_argument("--count", type=positive_int, default=2)
    sample.add_argument("--size", type=positive_int, default=512)
    sample.add_argument("--seed", type=int, default=0)

    segment = add("segment", "find the cells; write label images and a cell table", [images])
    segment.add_argument("--out-dir", type=Path, required=True, help="folder for the label images and cell tables (created)")
    fail_fast_option(segment)

    embed = add("embed", "embed every cell; write an .npz", [images, model])
    embed.add_argument("--out", type=Path, required=True, help=".npz file to write (its folder is created)")
    fail_fast_option(embed)
    extra_output_options(embed)
    screen_options(embed)

    train = add("train", "train a head on labelled cells; save a model bundle", [images, model])
    train.add_argument("--annotations", type=Path, required=True, help="CSV with columns image, label, class")
    head_option(train)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", type=Path, required=True, help="model bundle to write (.dinoloc)")

    predict = add("predict", "predict every cell; write the per-cell CSV", [images, model])
    predict.add_argument("--model", type=Path, help="model bundle from dinoloc train / finetune")
    predict.add_argument("--annotations", type=Path, help="instead of --model: train --head on these labelled cells first")
    head_option(predict, "head trained on --annotations")
    predict.add_argument("--out", type=Path, required=True, help="CSV to write (its folder is created)")
    fail_fast_option(predict)
    extra_output_options(predict)
    screen_options(predict)

    aggregate = add("aggregate", "per-well (or per-image) profiles: median embedding, class fractions, cell count")
    aggregate_options(aggregate)

    evaluate = add("evaluate", "cross-validated macro-F1 on labelled cells", [images, model])
    evaluate.add_argument("--annotations", type=Path, required=True)
    head_option(evaluate)
    evaluate.add_argument("--folds", type=positive_int, default=5)
    evaluate.add_argument("--fractions", type=float, nargs="*", default=None, help="also a low-shot curve at these fractions of labelled cells")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--out-dir", type=Path, help="write report.json and PNG figures here")
    evaluate.add_argument("--finetune", action="store_true", help="compare the frozen head with fine-tuning (cross-validated)")
    training_options(evaluate)

    finetune = add("finetune", "fine-tune the backbone on labelled cells; save a model bundle", [images, model])
    finetune.add_argument("--annotations", type=Path, required=True, help="CSV with columns image, label, class")
    head_option(finetune, "head fitted on the fine-tuned embeddings")
    finetune.add_argument("--seed", type=int, default=0)
    finetune.add_argument("--out", type=Path, required=True, help="model bundle to write (.dinoloc)")
    training_options(finetune)

    pretrain = add("pretrain", "self-supervised DINO training on the cells of the images (no labels needed)", [images])
    pretrain_options(pretrain)

    patchmap = add("patchmap", "patch feature map of one image as a TIFF: PCA colours, or patches similar to one",
                   [images, model])
    patch_map_options(patchmap)

    add("backbones", "list the backbones and channel strategies")

    demo = add("demo", "the main job: napari with the plugin and a sample, or headless without a display")
    demo.add_argument("outdir", type=Path, nargs="?", default=Path("dinoloc-demo"))
    demo.add_argument("--headless", action="store_true", help="run the pipeline without a window even when a display exists")
    demo.add_argument("--backbone", default=None, choices=feature_choices(), metavar="NAME",
                      help=f"features for the headless run (default: {defaults.FEATURES}, the measured best)")
    demo.add_argument("--size", type=positive_int, default=768)
    return parser
