"""A screen run from start to the merged outputs' inputs: open (or resume) the run folder, compute the
shards still missing, record each as it comes in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..errors import DinolocError
from ..progress import CancelToken, ProgressCallback, check_cancel, report
from ._run import ScreenRun
from ._tasks import TaskSpec


@dataclass
class RunSummary:
    computed: list = field(default_factory=list)    # shard keys computed in this call (an image's, or a tile's)
    reused: list = field(default_factory=list)      # keys whose shard was already complete
    skipped: list = field(default_factory=list)     # (key, image, reason) of images that could not be used
    notes: list = field(default_factory=list)       # how images were read, from the workers
    workers: set = field(default_factory=set)       # pids of the processes that computed shards


def run_screen(run: ScreenRun, images: Sequence, spec: TaskSpec, executor, progress: Optional[ProgressCallback] = None,
               cancel: Optional[CancelToken] = None, fail_fast: bool = False) -> RunSummary:
    """Compute every shard of ``run`` that is missing or damaged (``images``: the ScreenImages, tiled ones with
    their plan); the manifest is saved on the way out, also when cancelled or failing, so the next call resumes."""
    from ..batch import job_name
    from ._tile_plan import tasks_of

    by_key = {task.key: task for task in tasks_of(images)}
    todo = set(run.to_compute())
    summary = RunSummary(reused=[k for k in run.keys if k not in todo])
    tasks = [(task, str(run.shard_path(key))) for key, task in by_key.items() if key in todo]
    done, total = len(summary.reused), len(run.keys)
    what = "Images" if len(by_key) == len(images) else "Images and tiles"
    report(progress, done, total, what)
    try:
        for result in executor.results(tasks, spec):
            run.record(result.key, result.status())
            summary.notes.extend(result.notes)
            summary.workers.add(result.pid)
            if result.skipped:
                if fail_fast:
                    raise DinolocError(result.skipped)
                summary.skipped.append((result.key, job_name(by_key[result.key].job), result.skipped))
            else:
                summary.computed.append(result.key)
            done += 1
            report(progress, done, total, what)
            check_cancel(cancel)
    except BaseException:
        executor.cancel()
        raise
    finally:
        run.save()
    return summary
