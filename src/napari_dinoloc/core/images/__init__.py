"""Reading microscopy images into a :class:`CellImage`: (C, Y, X) float32 in [0, 1], a stain per channel.

Reading happens in two steps so that front ends can ask the user about stains in between:
:func:`read_image` returns the pixels as stored (:class:`RawImage`, channels first), and
:func:`make_cell_image` checks and scales them once the stains are known. :func:`load_cell_image`
does both.

Supported: TIFF / OME-TIFF / ImageJ TIFF (tifffile, axes from the file's metadata when it has
them), PNG / JPEG and other formats imageio reads, RGB composites, and one file per stain
(Human Protein Atlas style ``<id>_red.png``, ``_green``, ``_blue``, ``_yellow``; Cell Painting
``<site>-chN...tiff``, one file per channel of a site).
"""
from ._cellpainting import (
    JUMP_CHANNEL_STAINS, cell_painting_channel, cell_painting_siblings, cell_painting_stains, find_cell_painting_groups,
)
from ._hpa import HPA_COLOUR_ORDER, HPA_FILE_PATTERN, expand_folders, find_hpa_groups, hpa_colour, hpa_id, hpa_siblings
from ._image import (
    SCALE_PERCENTILES, CellImage, RawImage, check_dtype, check_finite, check_not_empty, check_protein_not_empty,
    make_cell_image, resolve_stains, scale_by_percentiles, scale_channels,
)
from ._readers import (
    MAX_CHANNELS, TIFF_SUFFIXES, image_name, load_cell_image, read_channel_files, read_image, read_single_file,
    read_tiff, read_with_imageio, to_channels_first,
)

__all__ = [
    "JUMP_CHANNEL_STAINS", "cell_painting_channel", "cell_painting_siblings", "cell_painting_stains",
    "find_cell_painting_groups",
    "HPA_COLOUR_ORDER", "HPA_FILE_PATTERN", "MAX_CHANNELS", "SCALE_PERCENTILES", "TIFF_SUFFIXES", "CellImage",
    "RawImage", "check_dtype", "check_finite", "check_not_empty", "check_protein_not_empty", "expand_folders",
    "find_hpa_groups", "hpa_colour", "hpa_id", "hpa_siblings", "image_name", "load_cell_image", "make_cell_image",
    "read_channel_files", "read_image", "read_single_file", "read_tiff", "read_with_imageio", "resolve_stains",
    "scale_by_percentiles", "scale_channels", "to_channels_first",
]
