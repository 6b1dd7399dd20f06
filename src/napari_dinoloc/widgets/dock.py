"""The main dock: the four steps, top to bottom, and one progress bar with Cancel."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QGroupBox, QScrollArea, QVBoxLayout, QWidget

from ._layers import LayerPresenter
from ._state import state_for_viewer
from ._workers import JobBar, JobRunner
from .annotate_panel import AnnotatePanel
from .image_panel import ImagePanel
from .model_panel import ModelPanel
from .predict_panel import PredictPanel


class DinolocWidget(QWidget):
    """DINO localization: image and cells → model and embeddings → annotate → predict and export."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for_viewer(napari_viewer)
        if getattr(self.state, "presenter", None) is None:  # one per viewer, however many docks
            self.state.presenter = LayerPresenter(self.state)
        self.job_bar = JobBar()
        self.runner = JobRunner(napari_viewer, self.job_bar)
        self.image_panel = ImagePanel(self.state, self.runner)
        self.model_panel = ModelPanel(self.state, self.runner)
        self.annotate_panel = AnnotatePanel(self.state, self.runner)
        self.predict_panel = PredictPanel(self.state, self.runner, model_choice=self.model_panel.model_choice)
        self._build()
        self.destroyed.connect(self.runner.close)  # a closed dock drops the result of its running job

    def _build(self) -> None:
        steps = QWidget()
        column = QVBoxLayout(steps)
        column.setContentsMargins(4, 4, 4, 4)
        self.sections = []
        for title, panel in (("1 · Image and cells", self.image_panel), ("2 · Model and embeddings", self.model_panel),
                             ("3 · Annotate", self.annotate_panel), ("4 · Predict and export", self.predict_panel)):
            box = QGroupBox(title)
            inner = QVBoxLayout(box)
            inner.setContentsMargins(6, 6, 6, 6)
            inner.addWidget(panel)
            column.addWidget(box)
            self.sections.append(box)
        column.addStretch(1)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setWidget(steps)
        # Wide enough for the steps and the scroll bar: nothing is ever cut off at the right.
        self.scroll.setMinimumWidth(steps.sizeHint().width() + self.scroll.verticalScrollBar().sizeHint().width())
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.scroll, 1)
        layout.addWidget(self.job_bar)

    def show_step(self, index: int) -> None:
        """Scroll step ``index`` (0-3) into view."""
        self.scroll.ensureWidgetVisible(self.sections[index], 0, 0)
