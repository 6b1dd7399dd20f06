"""A screen from the user's choices to the merged files: the run's identity (settings, model hash), the
run folder opened or resumed, the shards computed, then the CSV (predict) or .npz (embed) written."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Optional

from ..errors import DinolocError
from ..progress import CancelToken, ProgressCallback
from ._dask import executor_for
from ._merge import write_csv, write_npz
from ._run import ScreenRun, run_folder_for
from ._runner import RunSummary, run_screen
from ._tasks import EMBED, PREDICT, TaskSpec
from ._tile_plan import plan_tiles
from ._tiles import DEFAULT_TILE

#: Settings that change how fast, not what comes out: a resumed run may change them.
NOT_IN_IDENTITY = ("batch_size", "notify")


@dataclass
class ScreenResult:
    path: Path               # the merged file
    cells: int
    summary: RunSummary
    run: ScreenRun
    summary_path: Optional[Path] = None  # predict: the per-image summary CSV beside the per-cell one
    images: list = field(default_factory=list)  # its rows, as dinoloc predict's one-process batch gives them


def run_settings(options) -> dict:
    """What shapes the results, JSON-able: the run manifest compares it with the earlier run's."""
    def plain(value):
        return {k: v for k, v in asdict(value).items() if k not in NOT_IN_IDENTITY} if is_dataclass(value) else value

    return json.loads(json.dumps({k: plain(getattr(options, k)) for k in ("stains", "channel_axis", "segmentation",
                                                                            "embed", "crop_mask")}, default=str))


def model_hash(command: str, backbone: Optional[str], model_path=None, weights=None, device: str = "auto") -> str:
    from ..files import hash_file

    parts = {"command": command, "backbone": backbone or "", "device": device,
             "model": hash_file(model_path) if model_path else "", "weights": hash_file(weights) if weights else ""}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def task_spec(command: str, options, *, backbone=None, model_path=None, weights=None, device="auto",
              cache_dir=None) -> TaskSpec:
    if command == EMBED and backbone and "+classic" in backbone:
        raise DinolocError(f"{backbone} scales its classic features on the first image it sees, so each worker would "
                           "scale differently: embed it without --workers/--scheduler, or use a model bundle (predict).")
    return TaskSpec(command, replace(options, notify=None), model_hash(command, backbone, model_path, weights, device),
                    backbone, str(model_path) if model_path else None, str(weights) if weights else None, device,
                    str(cache_dir) if cache_dir else None)


def screen(inputs, spec: TaskSpec, out, *, class_names=(), workers: Optional[int] = None,
           scheduler: Optional[str] = None, progress: Optional[ProgressCallback] = None,
           cancel: Optional[CancelToken] = None, fail_fast: bool = False, executor=None,
           tile: Optional[int] = DEFAULT_TILE) -> ScreenResult:
    """Compute (or resume) the run of ``inputs`` (a ScreenInputs) beside ``out``, then write ``out``:
    the per-cell CSV for predict, the embeddings .npz for embed. ``executor`` overrides workers/scheduler.
    Images larger than ``tile`` pixels on a side are cut into tiles, one task each (0 or None: never)."""
    settings = {**run_settings(spec.options), "class_names": list(class_names)}
    if tile and plan_tiles(inputs.images, spec.options, tile, task_embed_settings(spec)):
        settings["tile"] = tile  # only a run that cut images depends on it (earlier runs resume as before)
    run = ScreenRun.open(run_folder_for(out), spec.command, settings, spec.model_hash,
                         [image.describe() for image in inputs.images])
    if executor is not None:
        summary = run_screen(run, inputs.images, spec, executor, progress, cancel, fail_fast)
    else:
        with executor_for(workers, scheduler) as chosen:
            summary = run_screen(run, inputs.images, spec, chosen, progress, cancel, fail_fast)
    skipped = skips_of(summary)
    images = len(run.manifest["inputs"])
    if skipped and len(skipped) == images:
        raise skipped.nothing_left(images)
    if spec.command != PREDICT:
        return ScreenResult(Path(out), write_npz(run, out), summary, run)
    from ..image_summary import ImageSummary, summary_path_for

    per_image = ImageSummary(class_names)
    cells = write_csv(run, out, class_names, per_image)
    return ScreenResult(Path(out), cells, summary, run, per_image.write(summary_path_for(out)), per_image.rows())


def task_embed_settings(spec: TaskSpec):
    """The embedding settings the tasks will use: a model's own (crop window) for predict."""
    if spec.command != PREDICT or not spec.model_path:
        return spec.options.embed
    from ..bundle import embed_settings_for, load_bundle
    from ..embedding import EmbedSettings

    return embed_settings_for(load_bundle(spec.model_path), spec.options.embed or EmbedSettings())


def skips_of(summary: RunSummary):
    """The images the run went on without, as a ``core.batch.Skips`` (the command line lists them)."""
    from ..batch import Skips

    skipped = Skips()
    for _, image, reason in summary.skipped:
        skipped.add(image, reason)
    return skipped
