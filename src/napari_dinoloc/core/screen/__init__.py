"""Screens: many images, their outputs for other tools (Parquet, Zarr, AnnData) and per-well profiles.

``outputs.py`` writes and reads the per-cell table and embeddings as Parquet, Zarr and ``.h5ad``;
``profiles.py`` summarises cells per well or image, corrected on control wells. pandas, pyarrow, zarr
and anndata are imported inside the functions (``pip install napari-dinoloc[screen]``).
"""

from .outputs import (
    cell_frame, read_cells_csv, read_embeddings_zarr, read_parquet, write_anndata, write_embeddings_zarr,
    write_parquet,
)
from .profiles import aggregate_profiles, correct_on_controls, sphere_on_controls

__all__ = [
    "aggregate_profiles", "cell_frame", "correct_on_controls", "read_cells_csv", "read_embeddings_zarr",
    "read_parquet", "sphere_on_controls", "write_anndata", "write_embeddings_zarr", "write_parquet",
]
