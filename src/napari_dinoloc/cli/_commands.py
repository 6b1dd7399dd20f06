"""One function per ``dinoloc`` subcommand: arguments -> engine objects -> one use-case call -> print.

The tasks themselves live in ``core.workflows`` (the widgets call the same functions).
"""

from __future__ import annotations

from ..core import defaults
from ..core.errors import DinolocError
from ._output import TextProgress, note, print_epoch, report_skips, say


# ---- options -> engine objects --------------------------------------------------------------------
def run_options(args):
    from ..core.batch import RunOptions

    embed = embed_settings(args) if hasattr(args, "strategy") else None  # segment has no model options
    return RunOptions(stains=args.channels, channel_axis=args.channel_axis, segmentation=segmentation_params(args),
                      embed=embed, notify=note, crop_mask=getattr(args, "crop_mask", "whole"))


def segmentation_params(args):
    from ..core.segmentation import SegmentationParams
    from ..core.sizes import to_pixels

    pixel_size = getattr(args, "pixel_size", None)
    nucleus = to_pixels(getattr(args, "nucleus_diameter_um", None), pixel_size, "nucleus diameter") or args.nucleus_diameter
    cell = to_pixels(getattr(args, "cell_diameter_um", None), pixel_size, "cell diameter") or args.cell_diameter
    return SegmentationParams(nucleus_diameter=nucleus, cell_diameter=cell,
                              cytoplasm_stain=getattr(args, "cell_stain", None),
                              keep_border_cells=getattr(args, "keep_border_cells", False),
                              segmenter=getattr(args, "segmenter", "builtin"))


def embed_settings(args):
    from ..core.embedding import EmbedSettings

    return EmbedSettings(strategy=args.strategy, embedding=args.embedding, crop_size=args.crop_size,
                         crop_cells=getattr(args, "crop_cells", EmbedSettings.crop_cells),
                         input_size=args.input_size, mask_background=not args.keep_background,
                         batch_size=args.batch_size, device=args.device, precision=args.precision)


def finetune_settings(args):
    from ..core.augment import NO_AUGMENTATION, AugmentSettings
    from ..core.finetune import FinetuneSettings

    return FinetuneSettings(
        level=args.level, blocks=args.blocks, epochs=args.epochs, lr=args.lr, head_lr=args.head_lr,
        layer_decay=args.layer_decay, batch_size=args.train_batch, max_batch=args.max_batch,
        val_fraction=args.val_fraction, patience=args.patience, head_kind=getattr(args, "head", defaults.HEAD),
        augment=NO_AUGMENTATION if args.no_augment else AugmentSettings(), seed=args.seed, device=None,
    ).checked()


def cache(args):
    from ..core.cache import EmbeddingCache

    return None if args.no_cache else EmbeddingCache()


def jobs(args):
    from ..core.batch import crop_jobs, image_jobs

    if getattr(args, "crops", False):
        if args.labels:
            raise DinolocError("Single-cell crops need no --labels: each crop is one cell (see --crop-mask).")
        return [job for path in args.images for job in crop_jobs(path)]
    return image_jobs(args.images, args.labels)


def crop_annotations(args) -> None:
    """With --crops, --annotations may be the crop folder (classes from sub-folders) or a file,class CSV:
    either becomes an image,label,class file in a temporary folder that lives as long as ``args``."""
    import csv
    import tempfile
    from pathlib import Path

    from ..core.crop_inputs import list_crops, write_crop_classes

    given = getattr(args, "annotations", None)
    if not getattr(args, "crops", False) or given is None:
        return
    given = Path(given)
    if given.is_file():
        with open(given, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
        if not {"file", "class"} <= {h.strip() for h in header}:
            return  # already image,label,class
    crops = [c for path in args.images for c in list_crops(path, None if given.is_dir() else given)]
    args.crop_folder = tempfile.TemporaryDirectory(prefix="dinoloc-crops-")
    written = write_crop_classes(crops, Path(args.crop_folder.name) / "classes.csv")
    if written is None:
        raise DinolocError(f"No crop has a class in {given}: put crops in one sub-folder per class, or give a CSV "
                           "with columns file,class.")
    args.annotations = written


def options(args):
    """The run options of this command line (made once: the notes callback and settings are shared)."""
    if getattr(args, "run_options", None) is None:
        args.run_options = run_options(args)
    return args.run_options


def skips(args):
    """Images a batch goes on without (``--fail-fast``: none, the first problem ends the run)."""
    from ..core.batch import Skips

    return Skips(fail_fast=getattr(args, "fail_fast", True))


def preflight(args, **checks):
    """Everything checkable before the long work: outputs, model, annotations, images (core.workflows.preflight)."""
    from ..core.workflows.preflight import preflight as check

    return check(jobs(args), options(args), **checks)


def given_backbone(args):
    return args.backbone if getattr(args, "backbone_given", False) else None


def bundle_out(path):
    """The bundle file as it will be written (``.dinoloc`` appended when missing)."""
    from ..core.bundle import SUFFIX

    return path if path.suffix == SUFFIX else path.with_name(path.name + SUFFIX)


def load_backbone(args):
    from ..core.classic import load_features

    return load_features(args.backbone, weights=args.weights, device=args.device)


# ---- subcommands ----------------------------------------------------------------------------------
def cmd_sample(args) -> int:
    from ..core.sample_files import write_samples

    for path in write_samples(args.outdir, count=args.count, size=args.size, seed=args.seed):
        print(path)
    return 0


def cmd_segment(args) -> int:
    from ..core.workflows.cells import write_cells

    skipped = skips(args)
    plan = preflight(args, out_dirs=[args.out_dir], skips=skipped)
    for out, cells in write_cells(plan.jobs, options(args), args.out_dir, progress=TextProgress(), skips=skipped):
        print(f"{out}: {cells} cells")
    return report_skips(skipped)


def extra_outputs(args):
    """The --parquet / --zarr / --h5ad outputs, their packages checked before any work."""
    from ..core.workflows.cell_outputs import ExtraOutputs

    return ExtraOutputs(args.parquet, args.zarr, args.h5ad).check()


def extra_preflight(extra, outputs) -> dict:
    """preflight()'s checks of the CSV or .npz ``outputs`` and of the extra files and folders."""
    files = [*outputs, *([extra.h5ad] if extra.h5ad else [])]
    return {"outputs": files, "out_dirs": [p for p in (extra.parquet, extra.zarr) if p is not None]}


def cmd_embed(args) -> int:
    from ..core.workflows import cell_outputs
    from ..core.workflows.cells import write_embeddings
    from ._screen import cmd_screen, wanted

    if wanted(args):
        return cmd_screen(args, "embed", options(args), given_backbone(args), cache(args), extra_outputs(args))
    skipped, extra = skips(args), extra_outputs(args)
    plan = preflight(args, **extra_preflight(extra, [args.out]), skips=skipped)
    backbone, kept = load_backbone(args), {} if extra.asked else None
    cells, images = write_embeddings(plan.jobs, options(args), backbone, args.out,
                                     cache=cache(args), progress=TextProgress(), skips=skipped, keep=kept)
    print(f"{args.out}: {cells} cells from {images} image(s)")
    if extra.asked:
        about = cell_outputs.run_description(cell_outputs.model_card(backbone=backbone),
                                             [e.signature for _, e in kept["parts"]])
        for path in cell_outputs.write_embedded_outputs(kept["rows"], kept["parts"], extra, about):
            print(f"{path}: {cells} cells")
    return report_skips(skipped)


def cmd_train(args) -> int:
    from ..core.workflows.training import model_summary, train_model

    out = bundle_out(args.out)
    plan = preflight(args, outputs=[out], annotations=args.annotations, need_classes=True)
    model = train_model(plan.jobs, options(args), load_backbone(args), args.annotations, args.head, args.seed,
                        out=out, cache=cache(args), progress=TextProgress())
    if model.evaluation:
        print(model.evaluation.format_table())
    print(model_summary(model, args.head))
    return 0


def cmd_predict(args) -> int:
    from ..core.workflows.predicting import predict_with_model, prediction_model
    from ._screen import cmd_screen, wanted

    if wanted(args):
        return cmd_screen(args, "predict", options(args), given_backbone(args), cache(args), extra_outputs(args))
    if args.model and args.annotations:
        raise DinolocError("Give either --model or --annotations, not both.")
    skipped, extra = skips(args), extra_outputs(args)
    plan = preflight(args, **extra_preflight(extra, [args.out]), model=args.model, backbone=given_backbone(args),
                     annotations=args.annotations, need_classes=bool(args.annotations), skips=skipped)
    model = prediction_model(plan.jobs, options(args), model_path=args.model, annotations_path=args.annotations,
                             head_kind=args.head, load_backbone=lambda: load_backbone(args), weights=args.weights,
                             device=args.device, cache=cache(args), progress=TextProgress(),
                             backbone=given_backbone(args), skips=skipped)
    kept = [] if extra.need_embeddings else None
    result = predict_with_model(plan.jobs, model, args.out, cache=cache(args), progress=TextProgress(), skips=skipped,
                                keep_embeddings=kept)
    print(result.summary())
    print(f"{result.summary_path}: {len(result.images)} images (class counts and fractions per image)")
    for warning in result.warnings:
        say(f"dinoloc: warning: {warning}")
    if extra.asked:
        from ..core.workflows import cell_outputs

        about = cell_outputs.run_description(cell_outputs.model_card(model), [e.signature for _, e in kept or ()])
        for path in cell_outputs.write_run_outputs(result.path, kept or [], extra, about):
            print(f"{path}: {result.cells} cells")
    return report_skips(skipped)


def cmd_aggregate(args) -> int:
    from ..core.screen import aggregate_profiles
    from ..core.workflows import cell_outputs

    by = [c.strip() for c in args.by.split(",") if c.strip()]
    table, vectors = cell_outputs.load_cells(args.source, args.embeddings)
    profiles = aggregate_profiles(table, vectors, by=by, controls=cell_outputs.controls_from(table, args.controls),
                                  method=args.method, scale=not args.no_scale, sphere=args.sphere)
    written = cell_outputs.write_profiles(profiles, args.out)
    print(f"{written}: {len(profiles)} profiles of {len(table)} cells (by {', '.join(by)})")
    return 0


def cmd_evaluate(args) -> int:
    from ..core.workflows import reports

    if args.finetune:
        return cmd_compare(args)
    cells = _training_set(args, baseline=True)
    plan = reports.EvaluationPlan(cells.vectors, cells.classes, None, args.head, args.folds, seed=args.seed,
                                  fractions=args.fractions, groups=cells.images, baseline=cells.baseline)
    report = reports.evaluate(plan, progress=TextProgress(), curve=False)
    print(report.evaluations["frozen"].format_table())
    if reports.BASELINE in report.evaluations:
        print(f"\n== {reports.CAPTIONS[reports.BASELINE]} ==\n{report.evaluations[reports.BASELINE].format_table()}")
        print(reports.baseline_line(report))
    if args.fractions:
        report.curve = reports.low_shot(plan)
        for line in reports.curve_lines(report.curve):
            print(line)
    _write_report(args, report)
    return 0


def cmd_compare(args) -> int:
    """``dinoloc evaluate --finetune``: cross-validated frozen + head against fine-tuned + head."""
    from ..core.workflows import reports
    from ..core.workflows.training import annotated_images

    checked = preflight(args, out_dirs=[args.out_dir] if args.out_dir else [], annotations=args.annotations,
                        need_classes=True)
    settings, backbone = finetune_settings(args), load_backbone(args)
    images = annotated_images(checked.jobs, options(args), args.annotations, TextProgress())
    plan = reports.EvaluationPlan(None, [], None, args.head, args.folds, seed=args.seed,
                                  fine_tune=(images, lambda: backbone, embed_settings(args), settings))
    report = reports.evaluate(plan, progress=TextProgress(), curve=False)
    print(reports.comparison_text(report))
    _write_report(args, report)
    return 0


def _training_set(args, baseline: bool = False):
    """The annotated cells' embeddings; with ``baseline``, also their classic features (unless those are chosen)."""
    from ..core.classic import CLASSIC, load_features
    from ..core.workflows.training import embedded_sessions, training_set

    plan = preflight(args, out_dirs=[args.out_dir] if args.out_dir else [], annotations=args.annotations,
                     need_classes=True)
    sessions = embedded_sessions(plan.jobs, options(args), load_backbone(args), cache(args), TextProgress())
    classic = load_features(CLASSIC) if baseline and args.backbone != CLASSIC else None
    return training_set(sessions, args.annotations, note, baseline=classic)


def _write_report(args, report) -> None:
    from ..core.workflows.reports import write_report

    if args.out_dir:
        for path in write_report(args.out_dir, report):
            print(path)


def cmd_finetune(args) -> int:
    from ..core.workflows.finetuning import file_summary, finetune_to_file
    from ..core.workflows.training import annotated_images

    out = bundle_out(args.out)
    plan = preflight(args, outputs=[out], annotations=args.annotations, need_classes=True)
    settings, backbone = finetune_settings(args), load_backbone(args)
    images = annotated_images(plan.jobs, options(args), args.annotations, TextProgress())
    run = finetune_to_file(images, lambda: backbone, embed_settings(args), settings, out,
                           progress=TextProgress(), on_epoch=print_epoch)
    print(run.result.validation.format_table())
    print(file_summary(run.result, run.path))
    return 0


def cmd_pretrain(args) -> int:
    from ..core.workflows import pretraining

    if args.resume and args.start != pretraining.SCRATCH:
        raise DinolocError("--resume continues the run saved in --out from where it stopped: leave out --start.")
    settings = pretraining.base_settings(epochs=args.epochs, minutes=args.minutes, batch_size=args.batch_size,
                                         checkpoint_minutes=args.checkpoint_minutes, device=args.device,
                                         precision=args.precision)
    plan = preflight(args, outputs=[] if args.resume else [args.out])
    cells = pretraining.image_cells(plan.jobs, options(args), args.crop_cache, progress=TextProgress(), say=say)
    say(f"dinoloc: pretraining on {len(cells)} cells of {len(cells.records)} image(s)")
    run = pretraining.pretrain_model(cells, args.out, settings, start=args.start, weights=args.weights,
                                     resume=args.resume, progress=TextProgress())
    for line in pretraining.usage_lines(run):
        print(line)
    return 0


def cmd_patchmap(args) -> int:
    from ..core.workflows.patch_maps import write_patch_map

    plan = preflight(args, outputs=[args.out])
    if len(plan.jobs) != 1:
        raise DinolocError(f"dinoloc patchmap makes the map of one image; {len(plan.jobs)} were given. Give one image.")
    from ..core.backbones import load_backbone as load_transformer
    from ..core.classic.backbone import transformer_for

    transformer = load_transformer(transformer_for(args.backbone), weights=args.weights, device=args.device)
    written = write_patch_map(plan.jobs[0], options(args), transformer, args.out, args.similar_to,
                              args.region, args.patches, progress=TextProgress())
    what = "PCA colours (R, G, B)" if written.kind == "pca" else "similarity to the patch at " + ",".join(
        f"{v:g}" for v in args.similar_to)
    print(f"{written.path}: {what}, {written.grid[0]}x{written.grid[1]} patches of "
          f"{written.patch_pixels[0]:.1f} px")
    return 0


def cmd_backbones(args) -> int:
    from ..core.backbones import BACKBONES
    from ..core.strategies import STRATEGIES

    print("Backbones:")
    for spec in BACKBONES.values():
        print(f"  {spec.name:<16} {spec.description}")
    print("Channel strategies:")
    for strategy in STRATEGIES.values():
        print(f"  {strategy.name:<16} {strategy.description}")
    return 0


def cmd_demo(args) -> int:
    from ..core.demo import has_display, run_headless_demo

    if not args.headless and has_display():
        # launch.py is a napari front end of its own (no widget code): imported only here, on demand.
        from ..launch import open_viewer_with_sample

        open_viewer_with_sample()
        return 0
    for line in run_headless_demo(args.outdir, backbone=args.backbone, size=args.size, progress=TextProgress(), say=say):
        print(line)
    return 0


COMMANDS = {
    "sample": cmd_sample,
    "segment": cmd_segment,
    "embed": cmd_embed,
    "train": cmd_train,
    "predict": cmd_predict,
    "aggregate": cmd_aggregate,
    "evaluate": cmd_evaluate,
    "finetune": cmd_finetune,
    "pretrain": cmd_pretrain,
    "patchmap": cmd_patchmap,
    "backbones": cmd_backbones,
    "demo": cmd_demo,
}


def run(args) -> int:
    if args.command not in COMMANDS:
        raise DinolocError(f"Unknown command {args.command!r}.")
    crop_annotations(args)
    return COMMANDS[args.command](args)
