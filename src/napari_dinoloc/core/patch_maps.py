"""Patch-level feature maps: what a ViT sees inside the cells (Cell-DINO Fig. 9; DINOv2's PCA maps).

``patch_tokens`` runs a region of the image through the backbone and keeps the patch tokens on their
grid; ``pca_colours`` maps their first three principal components, fitted on the patches that lie on
cells, to red, green and blue; ``similarity_map`` gives the cosine similarity of every patch to one
patch. ``full_size`` puts a map back on the image's pixel grid; ``layer_placement`` says where a
patch-resolution map lies on the image (napari scale and translate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import DinolocError
from .stains import validate_stains
from .strategies import STRATEGIES

FOREGROUND_SHARE = 0.5  # a patch belongs to the cells when at least half of its pixels do
MAX_INPUT_SIDE = 896  # the longest side of the region as fed to the model (memory: tokens grow with its square)


@dataclass
class PatchTokens:
    tokens: np.ndarray  # (GY, GX, D) float32, one token per patch (views / stains side by side in D)
    region: tuple[int, int, int, int]  # (y0, x0, y1, x1) of the image the grid covers
    foreground: np.ndarray | None = None  # (GY, GX) bool: patches on cells (None: no cells given)

    @property
    def grid(self) -> tuple[int, int]:
        return self.tokens.shape[:2]

    @property
    def patch_pixels(self) -> tuple[float, float]:
        """Image pixels per patch along y and x."""
        y0, x0, y1, x1 = self.region
        return (y1 - y0) / self.grid[0], (x1 - x0) / self.grid[1]


def patch_tokens(image, backbone, labels: np.ndarray | None = None, region=None, strategy: str = "natural",
                 patches_per_side: int | None = None, scale: float | None = None) -> PatchTokens:
    """The patch tokens of ``region`` ((y0, x0, y1, x1); default the whole image) on their grid.

    The region is resized by ``scale`` (model pixels per image pixel: the embedding's input size over
    its crop size sees cells as the embeddings do), or to ``patches_per_side`` patches along its longer
    side (default: twice the backbone's grid); never beyond MAX_INPUT_SIDE model pixels.
    """
    import torch
    import torch.nn.functional as F

    from .backbones import normalize

    stains = validate_stains(image.stains, image.data.shape[0], need_protein=False)
    y0, x0, y1, x1 = _checked_region(region, image.data.shape[1:])
    patch = backbone.spec.patch_size
    per_side = patches_per_side or 2 * (backbone.spec.input_size // patch)
    longest = max(y1 - y0, x1 - x0)
    scale = min(scale * longest if scale else per_side * patch, MAX_INPUT_SIDE) / longest
    size = [max(1, round((y1 - y0) * scale / patch)) * patch, max(1, round((x1 - x0) * scale / patch)) * patch]
    x = torch.from_numpy(np.ascontiguousarray(image.data[:, y0:y1, x0:x1], dtype=np.float32))[None]
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    grid = (size[0] // patch, size[1] // patch)
    parts = []
    with torch.inference_mode():
        for view in STRATEGIES.lookup(strategy).views(x, stains, backbone.spec.slots):
            if view is None:  # a stain role the image lacks (bag of channels): zeros, as in embeddings
                parts.append(torch.zeros(grid[0], grid[1], backbone.embed_dim))
                continue
            tokens = backbone.tokens(normalize(view, backbone.spec)).float().cpu()[0, backbone.num_prefix_tokens:]
            stains_in_view = tokens.shape[0] // (grid[0] * grid[1])  # a channel-agnostic model: stain by stain
            tokens = tokens.reshape(stains_in_view, grid[0], grid[1], -1)
            parts.extend(tokens)
    result = PatchTokens(torch.cat(parts, dim=-1).numpy(), (y0, x0, y1, x1))
    if labels is not None:
        result.foreground = patch_foreground(labels[y0:y1, x0:x1] > 0, grid)
    return result


def patch_foreground(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(GY, GX) bool: patches of which at least FOREGROUND_SHARE of the pixels are in ``mask``."""
    from skimage.transform import resize

    share = resize(mask.astype(np.float32), grid, order=1, anti_aliasing=True, preserve_range=True)
    return share >= FOREGROUND_SHARE


def pca_colours(patches: PatchTokens, background: float = 0.0) -> np.ndarray:
    """(GY, GX, 3) float32 in [0, 1]: the first three principal components of the patch tokens as RGB.

    The components are fitted on the patches on cells (all patches when no cells are known) and each
    is stretched between its 1st and 99th percentile there; patches off the cells get ``background``.
    """
    from sklearn.decomposition import PCA

    tokens = patches.tokens.reshape(-1, patches.tokens.shape[-1])
    on_cells = _foreground(patches).ravel()
    if on_cells.sum() < 3:
        raise DinolocError("Fewer than 3 patches lie on cells in this region: choose a region with cells "
                           "(or segment the cells first).")
    pca = PCA(n_components=3, random_state=0).fit(tokens[on_cells])
    projected = pca.transform(tokens)
    low, high = np.percentile(projected[on_cells], (1, 99), axis=0)
    colours = np.clip((projected - low) / np.maximum(high - low, 1e-8), 0, 1)
    colours[~on_cells] = background
    return colours.reshape(*patches.grid, 3).astype(np.float32)


def similarity_map(patches: PatchTokens, point: tuple[float, float]) -> np.ndarray:
    """(GY, GX) float32 in [-1, 1]: the cosine similarity of every patch to the patch at ``point``
    ((y, x) in image pixels); patches off the cells are NaN when cells are known."""
    y0, x0, y1, x1 = patches.region
    py, px = patches.patch_pixels
    row, col = int((point[0] - y0) // py), int((point[1] - x0) // px)
    if not (0 <= row < patches.grid[0] and 0 <= col < patches.grid[1]):
        raise DinolocError(f"The point ({point[0]:.0f}, {point[1]:.0f}) is outside the region of the patch map "
                           f"(y {y0}-{y1}, x {x0}-{x1}): click inside it.")
    tokens = patches.tokens / np.maximum(np.linalg.norm(patches.tokens, axis=-1, keepdims=True), 1e-8)
    similarity = (tokens @ tokens[row, col]).astype(np.float32)
    if patches.foreground is not None:
        similarity[~patches.foreground] = np.nan
    return similarity


def layer_placement(patches: PatchTokens) -> tuple[tuple[float, float], tuple[float, float]]:
    """napari (scale, translate) that lay a (GY, GX) map over the image pixels it was computed from."""
    y0, x0, _, _ = patches.region
    py, px = patches.patch_pixels
    # image pixel i is centred at i; patch j spans pixels [y0 + j*py - 0.5, y0 + (j+1)*py - 0.5]
    return (py, px), (y0 + (py - 1) / 2, x0 + (px - 1) / 2)


def full_size(patches: PatchTokens, patch_map: np.ndarray, shape: tuple[int, int], fill: float = 0.0) -> np.ndarray:
    """A patch map on the image's pixel grid (``shape``): each patch's value over its pixels, ``fill`` outside."""
    y0, x0, y1, x1 = patches.region
    rows = np.minimum(((np.arange(y0, y1) - y0) / patches.patch_pixels[0]).astype(int), patches.grid[0] - 1)
    cols = np.minimum(((np.arange(x0, x1) - x0) / patches.patch_pixels[1]).astype(int), patches.grid[1] - 1)
    out = np.full((*shape, *patch_map.shape[2:]), fill, dtype=np.float32)
    out[y0:y1, x0:x1] = patch_map[rows][:, cols]
    return out


def _foreground(patches: PatchTokens) -> np.ndarray:
    return patches.foreground if patches.foreground is not None else np.ones(patches.grid, bool)


def _checked_region(region, shape) -> tuple[int, int, int, int]:
    height, width = shape
    if region is None:
        return 0, 0, height, width
    y0, x0, y1, x1 = (int(round(v)) for v in region)
    y0, x0, y1, x1 = max(0, y0), max(0, x0), min(height, y1), min(width, x1)
    if y1 - y0 < 2 or x1 - x0 < 2:
        raise DinolocError(f"The region {tuple(region)} holds no part of the {height}x{width} image: "
                           "choose a region inside the image.")
    return y0, x0, y1, x1
