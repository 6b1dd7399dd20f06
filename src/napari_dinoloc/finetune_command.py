"""``dinoloc finetune``: fine-tune the backbone on annotated cells and save a model bundle.

Also the options and the run behind ``dinoloc evaluate --finetune`` (cross-validated frozen vs
fine-tuned). Wired into the parser by cli.py (``add_parser``) and into commands.COMMANDS
(``cmd_finetune``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive whole number")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Fine-tuning options, shared by ``finetune`` and ``evaluate --finetune``."""
    from .core.finetune import LEVELS, FinetuneSettings

    d = FinetuneSettings()
    group = parser.add_argument_group("fine-tuning")
    group.add_argument("--level", choices=LEVELS, default=d.level,
                       help="head: frozen backbone; last-blocks: the last --blocks blocks; full: all, layer-wise lr decay")
    group.add_argument("--blocks", type=_positive_int, default=d.blocks, help="blocks trained at level last-blocks")
    group.add_argument("--epochs", type=_positive_int, default=d.epochs, help="at most this many epochs (early stopping)")
    group.add_argument("--lr", type=_positive_float, default=d.lr, help="backbone learning rate")
    group.add_argument("--head-lr", type=_positive_float, default=d.head_lr, help="learning rate of the classifier trained with it")
    group.add_argument("--layer-decay", type=_positive_float, default=d.layer_decay, help="level full: lr factor per block from the top")
    group.add_argument("--train-batch", type=_positive_int, default=d.batch_size, help="cells per optimiser step")
    group.add_argument("--max-batch", type=_positive_int, default=d.max_batch,
                       help="cells per forward pass (gradients accumulate above it; halved on out-of-memory)")
    group.add_argument("--val-fraction", type=float, default=d.val_fraction, help="share of annotated cells for validation")
    group.add_argument("--patience", type=_positive_int, default=d.patience, help="epochs without a better validation F1 before stopping")
    group.add_argument("--no-augment", action="store_true", help="train without the Cell-DINO augmentations")


def add_parser(subparsers, parents) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("finetune", parents=list(parents),
                                   help="fine-tune the backbone on labelled cells; save a model bundle")
    parser.add_argument("--annotations", type=Path, required=True, help="CSV with columns image, label, class")
    parser.add_argument("--head", default="logistic", help="head fitted on the fine-tuned embeddings: knn, logistic or mlp")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="model bundle to write (.dinoloc)")
    add_training_options(parser)
    return parser


def finetune_settings(args):
    from .core.augment import NO_AUGMENTATION, AugmentSettings
    from .core.finetune import FinetuneSettings

    return FinetuneSettings(
        level=args.level, blocks=args.blocks, epochs=args.epochs, lr=args.lr, head_lr=args.head_lr,
        layer_decay=args.layer_decay, batch_size=args.train_batch, max_batch=args.max_batch,
        val_fraction=args.val_fraction, patience=args.patience, head_kind=getattr(args, "head", "logistic"),
        augment=NO_AUGMENTATION if args.no_augment else AugmentSettings(), seed=args.seed, device=None,
    ).checked()


def annotated_images(args, options, progress=None):
    """(image, labels, {label: class}) for each image with annotations, one image in memory at a time."""
    from .core.batch import classes_for_image, image_jobs, prepare_session, read_cell_classes

    cell_classes = read_cell_classes(args.annotations)
    for job in image_jobs(args.images, args.labels):
        session = prepare_session(job, options, progress=progress)
        annotations = classes_for_image(cell_classes, session.image.name)
        if annotations:
            yield session.image, session.labels, annotations


def print_epoch(epoch: int, train_loss: float, val_f1: float) -> None:
    print(f"\nepoch {epoch}: training loss {train_loss:.4f}, validation macro-F1 {val_f1:.3f}", file=sys.stderr)


def cmd_finetune(args) -> int:
    from .cli import TextProgress
    from .commands import _embed_settings, _load_backbone, _run_options
    from .core.bundle import SUFFIX, save_bundle
    from .core.files import check_writable
    from .core.finetune import finetune, finetune_bundle

    out = args.out if args.out.suffix == SUFFIX else args.out.with_name(args.out.name + SUFFIX)
    check_writable(out)  # fail before the training, not after
    settings = finetune_settings(args)
    backbone = _load_backbone(args.backbone, args.weights, args.device)
    options = _run_options(args)
    images = annotated_images(args, options, TextProgress())
    result = finetune(images, backbone, _embed_settings(args), settings, progress=TextProgress(), on_epoch=print_epoch)
    written = save_bundle(finetune_bundle(result, backbone), out, progress=TextProgress())
    print(result.validation.format_table())
    print(_summary(result, written))
    return 0


def _summary(result, path: Path) -> str:
    cells = sum(result.class_counts.values())
    trained = "" if result.level == "head" else (
        f", best epoch {result.metrics.get('best_epoch')} of {result.metrics.get('epochs_run')}"
        f" (validation macro-F1 {result.metrics.get('initial_val_f1', 0):.3f} frozen -> {result.metrics.get('best_val_f1', 0):.3f})")
    return (f"{path}: {result.level} fine-tuning on {cells} cells{trained}; "
            f"{result.settings.head_kind} head, classes {', '.join(result.class_names)}")


def cmd_compare(args) -> int:
    """``dinoloc evaluate --finetune``: cross-validated frozen + head against fine-tuned + head."""
    from .cli import TextProgress
    from .commands import _embed_settings, _load_backbone, _run_options
    from .core.finetune import compare_frozen_vs_finetuned

    settings = finetune_settings(args)
    backbone = _load_backbone(args.backbone, args.weights, args.device)
    images = annotated_images(args, _run_options(args), TextProgress())
    comparison = compare_frozen_vs_finetuned(images, backbone, _embed_settings(args), settings, folds=args.folds,
                                             seed=args.seed, progress=TextProgress())
    print(comparison.format_table())
    for name, evaluation in (("frozen", comparison.frozen), ("fine-tuned", comparison.finetuned)):
        print(f"\n== {name} ==\n{evaluation.format_table()}")
    if getattr(args, "out_dir", None):
        from .core.evaluation import write_report

        for path in write_report(args.out_dir, {"frozen": comparison.frozen, "finetuned": comparison.finetuned}, None):
            print(path)
    return 0
