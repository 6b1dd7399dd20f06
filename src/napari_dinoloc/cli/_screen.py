"""``dinoloc embed`` / ``predict`` as a screen: --workers / --scheduler (Dask), a CSV manifest or folders
given as images; one shard per image in ``<out>.shards/``, resumed when the same command runs again."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..core.errors import DinolocError
from ._output import TextProgress, note, report_skips, say


def wanted(args) -> bool:
    """A screen run: a cluster asked for, or inputs a screen reads (a CSV manifest, a folder to walk) with a
    saved model. Folders with --annotations (a head trained first) go the plain one-process batch."""
    from ..core.screen import is_screen_input

    if getattr(args, "crops", False):
        return False
    asked = (getattr(args, "workers", None) is not None or getattr(args, "scheduler", None)
             or getattr(args, "tile_given", False))
    if asked or any(Path(p).suffix.lower() == ".csv" for p in args.images):
        return True
    return not getattr(args, "annotations", None) and any(is_screen_input(Path(p)) for p in args.images)


def cmd_screen(args, command: str, run_options, given_backbone, store, extra=None) -> int:
    """``run_options``, ``given_backbone`` (a name the user gave, or None), ``store`` (the embedding
    cache or None) and ``extra`` (--parquet / --zarr / --h5ad) come from ``_commands``, as for every subcommand."""
    from ..core import screen
    from ..core.workflows.preflight import preflight

    if getattr(args, "annotations", None):
        raise DinolocError("A screen predicts with a saved model: train one first (dinoloc train ... --out "
                           "model.dinoloc), then give --model instead of --annotations.")
    if args.workers is not None and args.scheduler:
        raise DinolocError("Give either --workers (a cluster on this machine) or --scheduler (an existing one), not both.")
    if isinstance(run_options.stains, str):
        from ..core.stains import check_channel_spec

        check_channel_spec(run_options.stains)  # once, before the images: not once per image after them all
    inputs = screen.screen_inputs(args.images, args.labels, args.channels)
    if inputs.stains is not None:
        run_options = replace(run_options, stains=inputs.stains)
    model = getattr(args, "model", None)
    plan = preflight([], run_options, outputs=[args.out], model=model, backbone=given_backbone)
    if command == screen.PREDICT and model is None:
        raise DinolocError("Nothing to predict with: give --model (a bundle from dinoloc train).")
    class_names = plan.bundle.class_names if plan.bundle is not None else ()
    spec = screen.task_spec(command, run_options, backbone=given_backbone if model else args.backbone,
                            model_path=model, weights=args.weights, device=args.device,
                            cache_dir=store.root if store is not None else None)
    result = screen.screen(inputs, spec, args.out, class_names=class_names, workers=args.workers,
                           scheduler=args.scheduler, progress=TextProgress(), fail_fast=args.fail_fast,
                           tile=args.tile)
    summary = result.summary
    for line in dict.fromkeys(summary.notes):
        note(line)
    tiles = " or tile(s)" if len(result.run.keys) > len(result.run.manifest["inputs"]) else ""
    say(f"dinoloc: {len(summary.computed)} image(s){tiles} computed, {len(summary.reused)} reused from {result.run.folder}")
    print(f"{result.path}: {result.cells} cells")
    if result.summary_path is not None:
        print(f"{result.summary_path}: {len(result.images)} images (class counts and fractions per image)")
    if extra is not None and extra.asked:
        for path in merged_outputs(result, extra, spec):
            print(f"{path}: {result.cells} cells")
    return report_skips(screen.skips_of(summary))


def merged_outputs(result, extra, spec) -> list:
    """Parquet / Zarr / AnnData of the merged run, written one image (shard) at a time: the client never
    holds the whole run (``core.screen.write_run_outputs``)."""
    from ..core.screen import write_run_outputs

    card = {"command": spec.command, "backbone": spec.backbone, "model": str(spec.model_path or "")}
    return write_run_outputs(result.run, extra, card)
