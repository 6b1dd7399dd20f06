"""Screens: many images on a Dask cluster (or one process), one shard per image, resumable, merged at the end;
their outputs for other tools (Parquet, Zarr, AnnData) and per-well profiles.

``_inputs``: the images (CSV manifest with metadata, folders walked, files); ``_run``: the run folder,
its manifest and shards; ``_tasks``: one image on a worker (model loaded once per worker); ``_dask``:
where tasks run; ``_tiles``, ``_tile_plan``, ``_tile_task``: very large images cut into tiles, one task
and shard each; ``_threads``: a worker's share of the cores; ``_runner``: computing the missing shards;
``_merge``: the merged CSV / .npz and ``merge_run`` (everything in memory, for scripts); ``_stream`` /
``_h5ad_stream``: Parquet, Zarr and AnnData of a run written shard by shard (what the CLI uses); ``_plan``:
all of it from the choices.
``outputs.py`` writes and reads the per-cell table and embeddings as Parquet, Zarr and ``.h5ad``;
``profiles.py`` summarises cells per well or image, corrected on control wells. dask, pandas, pyarrow,
zarr and anndata are imported inside the functions (``pip install napari-dinoloc[screen]``).
"""
from ._dask import GPU, RETRIES, DaskExecutor, SerialExecutor, dask_client, executor_for, run_task
from ._inputs import ScreenImage, ScreenInputs, image_key, is_screen_input, read_manifest, screen_inputs, walk_folder
from ._merge import MergedRun, check_complete, merge_run, write_csv, write_npz
from ._plan import ScreenResult, model_hash, run_settings, screen, skips_of, task_spec
from ._run import ScreenRun, read_shard, run_folder_for, write_shard
from ._runner import RunSummary, run_screen
from ._stream import RunCells, stream_embeddings_zarr, stream_parquet, write_run_outputs
from ._h5ad_stream import stream_anndata
from ._tasks import EMBED, PREDICT, ShardResult, TaskSpec, loaded_model, run_image
from ._tile_plan import ImageTile, plan_tiles, tasks_of
from ._tiles import DEFAULT_TILE, TILE_LABELS, Tile, overlap_for, owned_cells, tile_layout
from .outputs import (
    cell_frame, read_cells_csv, read_embeddings_zarr, read_parquet, write_anndata, write_embeddings_zarr,
    write_parquet,
)
from .profiles import aggregate_profiles, correct_on_controls, sphere_on_controls

__all__ = [
    "DEFAULT_TILE", "ImageTile", "TILE_LABELS", "Tile", "overlap_for", "owned_cells", "plan_tiles", "run_task",
    "tasks_of", "tile_layout",
    "EMBED", "GPU", "PREDICT", "RETRIES", "DaskExecutor", "MergedRun", "RunSummary", "ScreenImage", "ScreenInputs",
    "ScreenResult", "ScreenRun", "SerialExecutor", "ShardResult", "TaskSpec", "check_complete", "dask_client",
    "executor_for", "image_key", "is_screen_input", "loaded_model", "merge_run", "model_hash", "read_manifest",
    "read_shard", "run_folder_for", "run_image", "run_screen", "run_settings", "screen", "screen_inputs", "skips_of",
    "task_spec", "walk_folder", "write_csv", "write_npz", "write_shard",
    "RunCells", "stream_anndata", "stream_embeddings_zarr", "stream_parquet", "write_run_outputs",
    "aggregate_profiles", "cell_frame", "correct_on_controls", "read_cells_csv", "read_embeddings_zarr",
    "read_parquet", "sphere_on_controls", "write_anndata", "write_embeddings_zarr", "write_parquet",
]
