"""Patch feature maps of one image written as a TIFF aligned with it (``dinoloc patchmap``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..progress import ProgressCallback, report


@dataclass
class PatchMapFile:
    path: Path
    kind: str  # "pca" (3 channels: the first three principal components as RGB) | "similarity"
    grid: tuple[int, int]  # patches along y and x
    patch_pixels: tuple[float, float]  # image pixels per patch


def write_patch_map(job, options, backbone, out, similar_to: tuple[float, float] | None = None, region=None,
                    patches_per_side: int | None = None, progress: Optional[ProgressCallback] = None) -> PatchMapFile:
    """The PCA colours of the patch tokens (fitted on the cells' patches), or with ``similar_to`` ((y, x)
    in image pixels) the cosine similarity of every patch to that one, at the image's pixel size:
    PCA as a (3, Y, X) uint8 TIFF (red, green, blue; black off the cells), similarity as (Y, X) float32
    (NaN off the cells)."""
    from ..batch import prepare_session
    from ..files import check_writable
    from ..patch_maps import full_size, patch_tokens, pca_colours, similarity_map
    from ..sample_files import write_image

    out = check_writable(Path(out))
    session = prepare_session(job, options, progress=progress)
    report(progress, 0, 1, "Patch tokens")
    strategy = options.embed.strategy if options.embed is not None else "natural"
    patches = patch_tokens(session.image, backbone, session.labels, region, strategy, patches_per_side)
    shape = session.image.data.shape[1:]
    if similar_to is None:
        colours = full_size(patches, pca_colours(patches), shape)
        write_image(out, np.round(np.moveaxis(colours, -1, 0) * 255).astype(np.uint8), axes="CYX")
        kind = "pca"
    else:
        write_image(out, full_size(patches, similarity_map(patches, similar_to), shape, fill=np.nan), axes="YX")
        kind = "similarity"
    report(progress, 1, 1, "Patch map written")
    return PatchMapFile(out, kind, patches.grid, patches.patch_pixels)
