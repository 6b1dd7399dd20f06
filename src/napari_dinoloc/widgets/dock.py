"""The main dock: the steps, top to bottom, and one progress bar with Cancel."""

from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import QFrame, QGroupBox, QScrollArea, QVBoxLayout, QWidget

from ..core import defaults
from ._docking import dock_as_tab
from ._layers import LayerPresenter
from ._reopen import offer_restores
from ._state import state_for_viewer
from ._workers import JobBar, JobRunner
from .annotate_panel import AnnotatePanel
from .finetune_panel import FinetunePanel
from .image_panel import ImagePanel, layer_image_name
from .model_panel import ModelPanel
from .patch_map_panel import PatchMapPanel
from .predict_panel import BUNDLE, PredictPanel
from .pretrain_panel import PretrainPanel
from .report_panel import ReportPanel


class DinolocWidget(QWidget):
    """DINO localization: image and cells → model and embeddings → annotate → predict and export
    → fine-tune → evaluate → adapt the backbone to the cells (self-supervised)."""

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
        self.finetune_panel = FinetunePanel(self.state, self.runner, model_choice=self.model_panel.model_choice,
                                            head_kind=self.head_kind)
        self.report_panel = ReportPanel(self.state, self.runner, head_kind=self.head_kind,
                                        finetune_inputs=self.finetune_panel.inputs)
        self.pretrain_panel = PretrainPanel(self.state, self.runner, self.model_panel)
        self.patch_map_panel = PatchMapPanel(self.state, self.runner, self.model_panel)
        self._build()
        offer_restores(self.image_panel, layer_image_name)  # an image analysed before comes back with its cells
        dock_as_tab(self)  # beside the plugin's other docks, not stacked under them
        self.destroyed.connect(self.runner.close)  # a closed dock drops the result of its running job

    def _build(self) -> None:
        steps = QWidget()
        column = QVBoxLayout(steps)
        column.setContentsMargins(4, 4, 4, 4)
        self.sections = []
        for title, panel in (("1 · Image and cells", self.image_panel), ("2 · Model and embeddings", self.model_panel),
                             ("3 · Annotate", self.annotate_panel), ("4 · Predict and export", self.predict_panel),
                             ("5 · Fine-tune the backbone", self.finetune_panel),
                             ("6 · Evaluation report", self.report_panel),
                             ("7 · Adapt the model to these cells (self-supervised)", self.pretrain_panel),
                             ("8 · Patch feature maps", self.patch_map_panel)):
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
        # Wide enough for the steps and the scroll bar, also when a panel grows later (a table, a row of
        # buttons): nothing is ever cut off at the right.
        self._fit_width = _FitWidth(self.scroll)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.scroll, 1)
        layout.addWidget(self.job_bar)

    def show_step(self, index: int) -> None:
        """Scroll step ``index`` (0-7) into view."""
        self.scroll.ensureWidgetVisible(self.sections[index], 0, 0)

    def head_kind(self) -> str:
        """The classifier chosen in step 4 (logistic when that is a saved model): fine-tuning and the
        report fit the same kind of head, so their numbers describe the classifier in use."""
        kind = self.predict_panel.head.currentData()
        return defaults.HEAD if kind == BUNDLE else kind


class _FitWidth(QObject):
    """Keeps a scroll area as wide as its content needs, now and whenever the content's layout changes."""

    def __init__(self, scroll: QScrollArea):
        super().__init__(scroll)
        self.scroll = scroll
        scroll.widget().installEventFilter(self)
        scroll.verticalScrollBar().installEventFilter(self)
        self.fit()

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 (Qt's name)
        if event.type() in (QEvent.Type.LayoutRequest, QEvent.Type.Show):
            self.fit()
        return False

    def fit(self) -> None:
        content = self.scroll.widget()
        needed = max(content.sizeHint().width(), content.minimumSizeHint().width())
        bar = self.scroll.verticalScrollBar()  # its style sheet may make it wider than its size hint
        needed += max(bar.sizeHint().width(), bar.width() if bar.isVisible() else 0) + 2 * self.scroll.frameWidth()
        if needed > self.scroll.minimumWidth():  # only ever wider: the dock does not jump back and forth
            self.scroll.setMinimumWidth(needed)
