"""Seeded synthetic fields of view with ground truth, for tests, benchmarks and demos.

Each field has two channels like an OpenCell image (Hoechst-like nucleus, protein of interest),
a ground-truth cell label image, the nuclei, and one localization class per cell. Cells are
irregular (random low-frequency outlines, elongated, varied sizes), often touch in colonies, and
carry a dim cytoplasmic baseline in the protein channel that is brightest near the nucleus, as
real cells are thickest there. Every cell's pattern is drawn inside its bounding box only, so a
2048 x 2048 field takes a couple of seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from .errors import DinolocError
from .stains import MICROTUBULES, NUCLEUS, PROTEIN

CLASS_NAMES: tuple[str, ...] = (
    "nucleoplasm",
    "nucleoli",
    "nuclear_membrane",
    "cytoplasm",
    "plasma_membrane",
    "mitochondria",
    "vesicles",
    "golgi",
    "er",
    "centrosome",
)

#: Fraction of the field covered by cells when n_cells is not given.
DEFAULT_COVERAGE = 0.42
#: Nucleus radius as a fraction of the cell radius (OpenCell-like cells: ~0.5).
NUCLEUS_TO_CELL = (0.42, 0.55)
#: Cell centres keep this fraction of the sum of their radii apart: neighbours touch, nuclei rarely.
MIN_GAP = 0.72


@dataclass(frozen=True, eq=False)
class SyntheticField:
    image: np.ndarray  # (2, Y, X) uint16: channel 0 nucleus, channel 1 protein
    stains: tuple[str, ...]  # ("nucleus", "protein")
    labels: np.ndarray  # (Y, X) int32 ground-truth cells 1..N
    nuclei: np.ndarray  # (Y, X) int32 nuclei, same ids as their cells
    cell_class: dict[int, str]  # label -> class name
    class_names: tuple[str, ...]  # the classes this field was drawn from


@dataclass(frozen=True)
class CellShape:
    """Geometry of one cell: a star-shaped outline around (cy, cx) and a nucleus inside it."""

    cy: float
    cx: float
    radius: float  # mean cell radius
    elongation: float
    angle: float
    harmonics: np.ndarray  # (k, 2): amplitude, phase of cos(k theta) terms, k = 2, 3, ...
    nuc_dy: float
    nuc_dx: float
    nuc_radius: float
    nuc_elongation: float
    nuc_harmonics: np.ndarray

    @property
    def reach(self) -> float:
        """Half-size of a window that surely holds the whole cell."""
        return self.radius * np.sqrt(self.elongation) * (1.0 + np.abs(self.harmonics[:, 0]).sum()) + 3.0


def make_field(
    seed: int = 0,
    shape: tuple[int, int] = (512, 512),
    n_cells: int | None = None,
    classes: Sequence[str] | None = None,
    cell_diameter: float = 56.0,
    cell_stain: bool = False,
) -> SyntheticField:
    """A deterministic synthetic field for ``seed``. ``n_cells`` is an upper bound (cells that
    find no room are skipped); by default about 42 % of the field is covered by cells. ``cell_stain``
    adds a third channel, microtubules, that fills each cell whatever its protein (the first two
    channels stay as without it)."""
    classes = check_classes(classes)
    rng = np.random.default_rng(seed)
    height, width = int(shape[0]), int(shape[1])
    if height < cell_diameter or width < cell_diameter:
        raise DinolocError(f"A synthetic field of {height}x{width} pixels cannot hold cells {cell_diameter} pixels wide: make it larger.")
    if n_cells is None:
        n_cells = max(1, round(DEFAULT_COVERAGE * height * width / (np.pi * (cell_diameter / 2) ** 2)))
    shapes = place_cells(rng, (height, width), n_cells, cell_diameter / 2)
    labels, nuclei = draw_cell_masks(shapes, (height, width))
    order = [classes[i] for i in rng.permutation(len(classes))]
    cell_class = {label: order[(label - 1) % len(order)] for label in range(1, len(shapes) + 1)}
    nucleus, protein = draw_channels(rng, labels, nuclei, shapes, cell_class)
    image = add_optics_and_noise(rng, np.stack([nucleus, protein]))
    if not cell_stain:
        return SyntheticField(image, (NUCLEUS, PROTEIN), labels, nuclei, cell_class, classes)
    own = np.random.default_rng([seed, 7])  # its own stream: the other channels do not change
    tubulin = add_optics_and_noise(own, draw_cell_stain(own, labels, nuclei, shapes)[None])
    return SyntheticField(np.concatenate([image, tubulin]), (NUCLEUS, PROTEIN, MICROTUBULES), labels, nuclei,
                          cell_class, classes)


def check_classes(classes: Sequence[str] | None) -> tuple[str, ...]:
    if classes is None:
        return CLASS_NAMES
    classes = tuple(classes)
    unknown = [c for c in classes if c not in PATTERNS]
    if unknown or not classes:
        raise DinolocError(f"Unknown synthetic class(es) {unknown}: choose from {', '.join(CLASS_NAMES)}.")
    return classes


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------


def place_cells(rng: np.random.Generator, shape: tuple[int, int], n_cells: int, radius: float) -> list[CellShape]:
    """Cells in colonies (most) and alone (some); neighbours may touch but centres keep apart."""
    height, width = shape
    n_colonies = max(1, round(n_cells / 8))
    colonies = rng.uniform((0, 0), (height, width), size=(n_colonies, 2))
    placed: list[CellShape] = []
    centres = np.empty((0, 2))
    sizes = np.empty(0)
    attempts = 0
    while len(placed) < n_cells and attempts < 60 * n_cells:
        attempts += 1
        cell_radius = radius * float(np.clip(rng.lognormal(0.0, 0.15), 0.7, 1.4))
        if rng.random() < 0.8:  # in a colony
            centre = colonies[rng.integers(n_colonies)] + rng.normal(0, 1.8 * radius, 2)
        else:
            centre = rng.uniform((0, 0), (height, width))
        margin = 0.35 * cell_radius  # the nucleus stays in the field; the cell may be cut
        if not (margin <= centre[0] < height - margin and margin <= centre[1] < width - margin):
            continue
        if len(centres):
            gaps = np.hypot(*(centres - centre).T)
            if np.any(gaps < MIN_GAP * (sizes + cell_radius)):
                continue
        placed.append(random_cell_shape(rng, centre, cell_radius))
        centres = np.vstack([centres, centre])
        sizes = np.append(sizes, cell_radius)
    return placed


def random_cell_shape(rng: np.random.Generator, centre: np.ndarray, radius: float) -> CellShape:
    n_harmonics = 5
    amplitudes = rng.uniform(0.0, 0.14, n_harmonics) / np.sqrt(np.arange(1, n_harmonics + 1))
    harmonics = np.stack([amplitudes, rng.uniform(0, 2 * np.pi, n_harmonics)], axis=1)
    nuc_amplitudes = rng.uniform(0.0, 0.05, 3)
    nuc_harmonics = np.stack([nuc_amplitudes, rng.uniform(0, 2 * np.pi, 3)], axis=1)
    nuc_radius = radius * rng.uniform(*NUCLEUS_TO_CELL)
    shift = rng.uniform(0, 0.18 * radius)
    direction = rng.uniform(0, 2 * np.pi)
    return CellShape(
        cy=float(centre[0]),
        cx=float(centre[1]),
        radius=radius,
        elongation=float(rng.uniform(1.0, 2.2)),
        angle=float(rng.uniform(0, np.pi)),
        harmonics=harmonics,
        nuc_dy=float(shift * np.sin(direction)),
        nuc_dx=float(shift * np.cos(direction)),
        nuc_radius=float(nuc_radius),
        nuc_elongation=float(rng.uniform(1.0, 1.5)),
        nuc_harmonics=nuc_harmonics,
    )


def star_distance(dy: np.ndarray, dx: np.ndarray, radius: float, elongation: float, angle: float, harmonics: np.ndarray) -> np.ndarray:
    """Distance from the centre divided by the outline's radius in that direction (1 on the outline)."""
    stretch = np.sqrt(elongation)  # area-preserving: the long axis grows as the short one shrinks
    cos, sin = np.cos(angle), np.sin(angle)
    u = (dx * cos + dy * sin) / stretch
    v = (-dx * sin + dy * cos) * stretch
    rho = np.hypot(u, v)
    # cos(k theta + phase) = Re(exp(i theta)^k exp(i phase)): powers are cheaper than arctan2 + cos.
    direction = (u + 1j * v).astype(np.complex64) / np.maximum(rho, 1e-6)
    power = direction.copy()
    outline = np.ones_like(rho)
    for amplitude, phase in harmonics:
        power *= direction
        outline += amplitude * (power * np.complex64(np.exp(1j * phase))).real
    return rho / (radius * outline)


def window(cy: float, cx: float, reach: float, shape: tuple[int, int]) -> tuple[slice, slice]:
    y0, x0 = max(0, int(cy - reach)), max(0, int(cx - reach))
    y1, x1 = min(shape[0], int(cy + reach) + 2), min(shape[1], int(cx + reach) + 2)
    return slice(y0, y1), slice(x0, x1)


def draw_cell_masks(shapes: list[CellShape], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel goes to the cell whose outline it is deepest inside: touching cells share a
    border where their outlines meet, like a weighted Voronoi tessellation."""
    labels = np.zeros(shape, np.int32)
    depth = np.full(shape, np.inf, np.float32)
    for label, cell in enumerate(shapes, start=1):
        ys, xs = window(cell.cy, cell.cx, cell.reach, shape)
        dy, dx = np.mgrid[ys, xs].astype(np.float32)
        d = star_distance(dy - cell.cy, dx - cell.cx, cell.radius, cell.elongation, cell.angle, cell.harmonics)
        inside = (d <= 1.0) & (d < depth[ys, xs])
        depth[ys, xs][inside] = d[inside]
        labels[ys, xs][inside] = label
    nuclei = np.zeros(shape, np.int32)
    for label, cell in enumerate(shapes, start=1):
        keep_connected_part(labels, label, cell)
        draw_nucleus(nuclei, labels, label, cell)
    return labels, nuclei


def keep_connected_part(labels: np.ndarray, label: int, cell: CellShape) -> None:
    """A neighbour can cut a cell in two; keep the piece that holds the cell's centre."""
    ys, xs = window(cell.cy, cell.cx, cell.reach, labels.shape)
    local = labels[ys, xs]
    parts, n = ndi.label(local == label)
    if n > 1:
        centre = parts[int(cell.cy) - ys.start, int(cell.cx) - xs.start]
        local[(parts > 0) & (parts != centre)] = 0


def draw_nucleus(nuclei: np.ndarray, labels: np.ndarray, label: int, cell: CellShape) -> None:
    ny, nx = cell.cy + cell.nuc_dy, cell.cx + cell.nuc_dx
    ys, xs = window(ny, nx, cell.nuc_radius * np.sqrt(cell.nuc_elongation) * 1.2 + 3, labels.shape)
    dy, dx = np.mgrid[ys, xs].astype(np.float32)
    d = star_distance(dy - ny, dx - nx, cell.nuc_radius, cell.nuc_elongation, cell.angle, cell.nuc_harmonics)
    # One pixel inside the cell's outline, so the nucleus never touches a neighbour directly.
    inside_cell = ndi.binary_erosion(labels[ys, xs] == label, border_value=1)
    nuclei[ys, xs][(d <= 1.0) & inside_cell] = label


# ----------------------------------------------------------------------------------------------
# Stains
# ----------------------------------------------------------------------------------------------


@dataclass
class CellContext:
    """Everything a pattern needs about one cell, inside its bounding box."""

    rng: np.random.Generator
    cell: np.ndarray  # bool mask
    nucleus: np.ndarray  # bool mask
    inner: np.ndarray  # distance to the cell outline, inside the cell
    from_nucleus: np.ndarray  # distance to the nucleus (0 inside it)
    into_nucleus: np.ndarray  # distance to the nucleus outline, inside the nucleus
    radius: float
    nuc_radius: float

    @property
    def cytoplasm(self) -> np.ndarray:
        return self.cell & ~self.nucleus

    def thickness(self) -> np.ndarray:
        """Relative cell thickness: highest around the nucleus, thin at the edge."""
        span = np.maximum(self.from_nucleus + self.inner, 1.0)
        return np.where(self.cell, 0.35 + 0.65 * (self.inner / span), 0.0)

    def noise(self, sigma: float) -> np.ndarray:
        smooth = ndi.gaussian_filter(self.rng.standard_normal(self.cell.shape).astype(np.float32), sigma)
        return smooth / (smooth.std() + 1e-6)

    def spots(self, where: np.ndarray, count: int, sigma: float, weights: np.ndarray | None = None) -> np.ndarray:
        """``count`` Gaussian spots of peak ~1 at random pixels of ``where``."""
        ys, xs = np.nonzero(where)
        image = np.zeros(self.cell.shape, np.float32)
        if len(ys) == 0 or count <= 0:
            return image
        p = None if weights is None else weights[ys, xs] / weights[ys, xs].sum()
        picks = self.rng.choice(len(ys), size=count, p=p)
        np.add.at(image, (ys[picks], xs[picks]), self.rng.uniform(0.6, 1.0, count) * 2 * np.pi * sigma**2)
        return ndi.gaussian_filter(image, sigma)


def pattern_nucleoplasm(c: CellContext) -> np.ndarray:
    holes = c.spots(c.into_nucleus > 3, c.rng.integers(1, 4), c.nuc_radius * 0.18)
    texture = 0.85 + 0.15 * c.noise(1.5)
    return np.where(c.nucleus, texture * (1.0 - 0.7 * np.clip(holes, 0, 1)), 0.0)


def pattern_nucleoli(c: CellContext) -> np.ndarray:
    blobs = c.spots(c.into_nucleus > 3, c.rng.integers(1, 5), c.nuc_radius * c.rng.uniform(0.12, 0.2))
    return np.clip(blobs, 0, 1) * c.nucleus + 0.08 * c.nucleus


def pattern_nuclear_membrane(c: CellContext) -> np.ndarray:
    edge = np.where(c.nucleus, c.into_nucleus, c.from_nucleus)
    ring = np.exp(-((edge - 0.5) ** 2) / (2 * 1.2**2)) * c.cell
    return ring * (0.8 + 0.2 * c.noise(2.0))


def pattern_cytoplasm(c: CellContext) -> np.ndarray:
    return c.thickness() * (0.85 + 0.15 * c.noise(3.0)) * np.where(c.nucleus, 0.25, 1.0)


def pattern_plasma_membrane(c: CellContext) -> np.ndarray:
    ring = np.exp(-((c.inner - 1.0) ** 2) / (2 * 1.3**2)) * c.cell
    return ring * (0.75 + 0.25 * c.noise(2.5))


def pattern_mitochondria(c: CellContext) -> np.ndarray:
    # Zero lines of smooth noise are worm-like tubules; a second noise field breaks them into pieces.
    tubules = np.exp(-((c.noise(1.8) / 0.3) ** 2)) * (c.noise(4.0) > -0.2)
    near_nucleus = np.exp(-c.from_nucleus / (0.8 * c.radius))
    return tubules * near_nucleus * c.cytoplasm


def pattern_vesicles(c: CellContext) -> np.ndarray:
    count = int(c.rng.integers(15, 35) * (c.radius / 28.0) ** 2)
    return np.clip(c.spots(c.cytoplasm & (c.inner > 1), count, c.rng.uniform(0.9, 1.4)), 0, 1.2)


def pattern_golgi(c: CellContext) -> np.ndarray:
    # A compact, bright ribbon of stacks beside the nucleus, on one side only.
    ys, xs = np.mgrid[: c.cell.shape[0], : c.cell.shape[1]]
    cy, cx = ndi.center_of_mass(c.nucleus) if c.nucleus.any() else (c.cell.shape[0] / 2, c.cell.shape[1] / 2)
    side = c.rng.uniform(0, 2 * np.pi)
    facing = np.cos(np.arctan2(ys - cy, xs - cx) - side) > np.cos(np.deg2rad(c.rng.uniform(35, 60)))
    where = facing & c.cytoplasm & (c.from_nucleus < 0.4 * c.radius)
    stacks = c.spots(where, int(c.rng.integers(15, 30)), c.rng.uniform(1.2, 1.8))
    ribbon = ndi.gaussian_filter(where.astype(np.float32), 2.0)
    return np.clip(stacks + 0.35 * ribbon, 0, 1.3)


def pattern_er(c: CellContext) -> np.ndarray:
    # A fine, dense reticulum over the whole cytoplasm plus the nuclear envelope it is joined to.
    mesh = np.exp(-((c.noise(1.1) / 0.45) ** 2)) * (0.5 + 0.5 * c.thickness())
    rim = np.exp(-(c.from_nucleus**2) / (2 * 1.5**2)) * (~c.nucleus)
    return np.maximum(mesh * c.cytoplasm, 0.8 * rim * c.cell)


def pattern_centrosome(c: CellContext) -> np.ndarray:
    where = c.cytoplasm & (c.from_nucleus > 1) & (c.from_nucleus < 4)
    dots = c.spots(where, 1, 1.3)
    if c.rng.random() < 0.5:  # duplicated centrosome: a second dot right beside the first
        dots += ndi.shift(dots, c.rng.uniform(-3, 3, 2), order=1)
    return np.clip(dots, 0, 1) + 0.04 * c.cytoplasm


PATTERNS: dict[str, Callable[[CellContext], np.ndarray]] = {
    "nucleoplasm": pattern_nucleoplasm,
    "nucleoli": pattern_nucleoli,
    "nuclear_membrane": pattern_nuclear_membrane,
    "cytoplasm": pattern_cytoplasm,
    "plasma_membrane": pattern_plasma_membrane,
    "mitochondria": pattern_mitochondria,
    "vesicles": pattern_vesicles,
    "golgi": pattern_golgi,
    "er": pattern_er,
    "centrosome": pattern_centrosome,
}


def hoechst(c: CellContext) -> np.ndarray:
    """DNA stain: chromatin texture, dimmer nucleoli, slightly brighter rim."""
    texture = 0.8 + 0.12 * c.noise(1.2) + 0.08 * c.noise(3.0)
    dark = c.spots(c.into_nucleus > 3, c.rng.integers(1, 4), c.nuc_radius * 0.15)
    rim = 0.1 * np.exp(-c.into_nucleus / 2.0)
    return np.where(c.nucleus, texture * (1 - 0.35 * np.clip(dark, 0, 1)) + rim, 0.0)


def cell_context(rng, local_cell: np.ndarray, local_nucleus: np.ndarray, cell: CellShape) -> CellContext:
    padded_cell = np.pad(local_cell, 1)  # the box edge counts as outside, so distances stay finite
    inner = ndi.distance_transform_edt(padded_cell)[1:-1, 1:-1]
    if local_nucleus.any():
        from_nucleus = ndi.distance_transform_edt(~local_nucleus)
        into_nucleus = ndi.distance_transform_edt(np.pad(local_nucleus, 1))[1:-1, 1:-1]
    else:
        from_nucleus = np.full(local_cell.shape, cell.radius, np.float64)
        into_nucleus = np.zeros(local_cell.shape)
    return CellContext(rng, local_cell, local_nucleus, inner, from_nucleus, into_nucleus, cell.radius, cell.nuc_radius)


def draw_channels(rng, labels, nuclei, shapes: list[CellShape], cell_class: dict[int, str]):
    """Noise-free nucleus and protein intensities (arbitrary units, cell peaks ~1)."""
    nucleus_image = np.zeros(labels.shape, np.float32)
    protein_image = np.zeros(labels.shape, np.float32)
    boxes = ndi.find_objects(labels)
    for label, box in enumerate(boxes, start=1):
        if box is None:
            continue
        box = tuple(slice(max(0, s.start - 3), s.stop + 3) for s in box)  # room for membrane rings
        local_cell = labels[box] == label
        c = cell_context(rng, local_cell, nuclei[box] == label, shapes[label - 1])
        pattern = PATTERNS[cell_class[label]](c)
        baseline = rng.uniform(0.1, 0.18) * c.thickness() * np.where(c.nucleus, 0.6, 1.0)
        protein = (np.maximum(pattern, 0) + baseline) * rng.lognormal(0.0, 0.3)
        protein_image[box] += np.where(local_cell, protein, 0.0).astype(np.float32)
        nucleus_image[box] += (hoechst(c) * rng.lognormal(0.0, 0.2)).astype(np.float32)
    return nucleus_image, protein_image


def draw_cell_stain(rng, labels, nuclei, shapes: list[CellShape]) -> np.ndarray:
    """A microtubule-like cell stain: fibrous, brightest around the nucleus, dimmer towards the edge."""
    image = np.zeros(labels.shape, np.float32)
    for label, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        local_cell = labels[box] == label
        c = cell_context(rng, local_cell, nuclei[box] == label, shapes[label - 1])
        fibres = 0.75 + 0.2 * c.noise(1.0) + 0.1 * c.noise(2.5)
        level = (0.35 + 0.65 * c.thickness()) * fibres * np.where(c.nucleus, 0.5, 1.0) * rng.lognormal(0.0, 0.25)
        image[box] += np.where(local_cell, np.maximum(level, 0), 0.0).astype(np.float32)
    return image


def add_optics_and_noise(rng: np.random.Generator, clean: np.ndarray) -> np.ndarray:
    """Blur, uneven illumination, background offset, shot noise and read noise -> uint16."""
    height, width = clean.shape[1:]
    yy, xx = np.ogrid[:height, :width]
    tilt = rng.uniform(-0.1, 0.1, 2)
    illumination = (1.0 + tilt[0] * (yy / height - 0.5) + tilt[1] * (xx / width - 0.5)).astype(np.float32)
    out = np.empty(clean.shape, np.uint16)
    for i, channel in enumerate(clean):
        photons = ndi.gaussian_filter(channel, rng.uniform(0.7, 1.6))
        photons *= illumination * np.float32(rng.uniform(1500, 3500))
        photons += np.float32(rng.uniform(80, 200))
        counts = rng.poisson(np.maximum(photons, 0, out=photons)).astype(np.float32)
        counts += np.float32(rng.uniform(3, 8)) * rng.standard_normal(counts.shape, dtype=np.float32)
        out[i] = np.clip(np.rint(counts, out=counts), 0, 65535, out=counts)
    return out
