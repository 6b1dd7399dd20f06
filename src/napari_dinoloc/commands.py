"""What each ``dinoloc`` subcommand does, on the engine. Argument parsing lives in cli.py."""

from __future__ import annotations

import sys

from .cli import TextProgress
from .core.errors import DinolocError


def run(args) -> int:
    return COMMANDS[args.command](args)


def _say(message: str) -> None:
    print(message, file=sys.stderr)


# ---- option -> engine objects --------------------------------------------------------------
def _run_options(args):
    from .core.batch import RunOptions
    from .core.segmentation import SegmentationParams

    seg = {k: v for k, v in (("nucleus_diameter", args.nucleus_diameter), ("cell_diameter", args.cell_diameter)) if v}
    embed = _embed_settings(args) if hasattr(args, "strategy") else None  # segment has no model options
    return RunOptions(stains=args.channels, channel_axis=args.channel_axis, segmentation=SegmentationParams(**seg), embed=embed)


def _embed_settings(args):
    from .core.embedding import EmbedSettings
    from .core.strategies import STRATEGIES

    if args.strategy not in STRATEGIES:
        raise DinolocError(f"Unknown channel strategy {args.strategy!r}: choose one of {', '.join(STRATEGIES)}.")
    return EmbedSettings(
        strategy=args.strategy,
        embedding=args.embedding,
        crop_size=args.crop_size,
        input_size=args.input_size,
        mask_background=not args.keep_background,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
    )


def _cache(args):
    from .core.cache import EmbeddingCache

    return None if args.no_cache else EmbeddingCache()


def _jobs(args):
    from .core.batch import image_jobs

    return image_jobs(args.images, args.labels)


def _load_backbone(name, weights, device):
    from .core.backbones import load_backbone

    return load_backbone(name, weights=weights, device=device)


def _embedded_sessions(args, backbone=None, options=None):
    from .core.batch import iter_embedded_sessions

    options = options or _run_options(args)
    backbone = backbone or _load_backbone(args.backbone, args.weights, args.device)
    return iter_embedded_sessions(_jobs(args), options, backbone, cache=_cache(args), progress=TextProgress())


# ---- subcommands -------------------------------------------------------------------------
def cmd_sample(args) -> int:
    from .core.sample_files import write_samples

    written = write_samples(args.outdir, count=args.count, size=args.size, seed=args.seed)
    for path in written:
        print(path)
    return 0


def cmd_segment(args) -> int:
    from .core.batch import prepare_session
    from .core.files import check_writable
    from .core.sample_files import write_label_image
    from .core.table import write_table

    if not args.out_dir.is_dir():
        raise DinolocError(f"The output folder {args.out_dir} does not exist: create it first.")
    options = _run_options(args)
    for job in _jobs(args):
        session = prepare_session(job, options, progress=TextProgress())
        out = check_writable(args.out_dir / f"{session.image.name}_cells.tif")
        write_label_image(out, session.labels)
        write_table(args.out_dir / f"{session.image.name}_cells.csv", session.rows(), ())
        print(f"{out}: {len(session.table)} cells")
    return 0


def cmd_embed(args) -> int:
    from .core.embedding_files import save_embeddings
    from .core.files import check_writable

    check_writable(args.out)
    parts = [(session.image.name, session.embeddings) for session in _embedded_sessions(args)]
    save_embeddings(args.out, parts)
    print(f"{args.out}: {sum(len(e.labels) for _, e in parts)} cells from {len(parts)} image(s)")
    return 0


def _training_set(args, sessions):
    """Embeddings of the annotated cells of every image (only these stay in memory)."""
    import numpy as np

    from .core.batch import classes_for_image, read_cell_classes

    cell_classes = read_cell_classes(args.annotations)
    vectors, classes, last = [], [], None
    for session in sessions:
        annotations = classes_for_image(cell_classes, session.image.name)
        if annotations:
            rows, names = session.annotated_training_set(annotations)
            vectors.append(rows)
            classes += names
        last = session
    if not vectors:
        raise DinolocError(f"No cell of these images is annotated in {args.annotations}: check its image and label columns.")
    return np.concatenate(vectors), classes, last


def cmd_train(args) -> int:
    from .core.bundle import bundle_for_head, save_bundle
    from .core.files import check_writable
    from .core.heads import train_head

    check_writable(args.out)
    backbone = _load_backbone(args.backbone, args.weights, args.device)
    vectors, classes, last = _training_set(args, _embedded_sessions(args, backbone))
    evaluation = _cross_validate_if_possible(args.head, vectors, classes, args.seed)
    head = train_head(args.head, vectors, classes, progress=TextProgress(), seed=args.seed)
    metrics = evaluation.to_dict() if evaluation else {}
    save_bundle(bundle_for_head(head, backbone, last.image.stains, _embed_settings(args), classes, metrics, args.seed), args.out)
    if evaluation:
        print(evaluation.format_table())
    print(f"{args.out}: {args.head} head on {len(classes)} cells, classes {', '.join(head.class_names)}")
    return 0


def _cross_validate_if_possible(kind, vectors, classes, seed):
    from collections import Counter

    from .core.evaluation import cross_validate

    if min(Counter(classes).values()) < 2 or len(set(classes)) < 2:
        return None  # train_head explains what is missing
    return cross_validate(kind, vectors, classes, folds=5, seed=seed)


def cmd_predict(args) -> int:
    from .core.bundle import check_bundle_fits
    from .core.files import check_writable
    from .core.table import CsvTableWriter

    check_writable(args.out)
    head, backbone, options, bundle = _prediction_model(args)
    with CsvTableWriter(args.out, head.class_names) as writer:
        count = 0
        for session in _embedded_sessions(args, backbone, options):
            if bundle is not None:
                check_bundle_fits(bundle, session.image.stains)
            session.set_head(head)
            writer.write_rows(session.rows())
            count += len(session.table)
    print(f"{args.out}: {count} cells")
    return 0


def _prediction_model(args):
    """(head, backbone, options, bundle or None): a saved bundle, or a head trained now."""
    if args.model and args.annotations:
        raise DinolocError("Give either --model or --annotations, not both.")
    if args.model:
        from .core.bundle import backbone_for_bundle, embed_settings_for, load_bundle

        bundle = load_bundle(args.model)
        options = _run_options(args)
        options.embed = embed_settings_for(bundle, _embed_settings(args))
        return bundle.head, backbone_for_bundle(bundle, args.weights, args.device), options, bundle
    if args.annotations:
        from .core.heads import train_head

        backbone = _load_backbone(args.backbone, args.weights, args.device)
        vectors, classes, _ = _training_set(args, _embedded_sessions(args, backbone))
        return train_head(args.head, vectors, classes), backbone, _run_options(args), None
    raise DinolocError("Nothing to predict with: give --model (a bundle from dinoloc train) or --annotations with labelled cells.")


def cmd_evaluate(args) -> int:
    if args.finetune:
        from .finetune_command import cmd_compare

        return cmd_compare(args)
    from .core.evaluation import cross_validate, low_shot_curve, write_report

    vectors, classes, _ = _training_set(args, _embedded_sessions(args))
    evaluation = cross_validate(args.head, vectors, classes, folds=args.folds, seed=args.seed, progress=TextProgress())
    print(evaluation.format_table())
    curve = None
    if args.fractions:
        curve = low_shot_curve(args.head, vectors, classes, fractions=args.fractions, folds=args.folds, seed=args.seed)
        for point in curve:
            print(f"fraction {point['fraction']:.3f}: macro-F1 {point['macro_f1_mean']:.3f} ± {point['macro_f1_std']:.3f} ({point['train_cells']:.0f} training cells)")
    if args.out_dir:
        for path in write_report(args.out_dir, {"frozen": evaluation}, curve):
            print(path)
    return 0


def cmd_backbones(args) -> int:
    from .core.backbones import BACKBONES
    from .core.strategies import STRATEGIES

    print("Backbones:")
    for spec in BACKBONES.values():
        print(f"  {spec.name:<16} {spec.description}")
    print("Channel strategies:")
    for strategy in STRATEGIES.values():
        print(f"  {strategy.name:<16} {strategy.description}")
    return 0


def cmd_demo(args) -> int:
    from .core.demo import has_display, run_headless_demo

    if not args.headless and has_display():
        from .launch import open_viewer_with_sample

        open_viewer_with_sample()
        return 0
    for line in run_headless_demo(args.outdir, backbone=args.backbone, size=args.size, progress=TextProgress(), say=_say):
        print(line)
    return 0


def cmd_finetune(args) -> int:
    from .finetune_command import cmd_finetune as run_finetune

    return run_finetune(args)


COMMANDS = {
    "finetune": cmd_finetune,
    "sample": cmd_sample,
    "segment": cmd_segment,
    "embed": cmd_embed,
    "train": cmd_train,
    "predict": cmd_predict,
    "evaluate": cmd_evaluate,
    "backbones": cmd_backbones,
    "demo": cmd_demo,
}
