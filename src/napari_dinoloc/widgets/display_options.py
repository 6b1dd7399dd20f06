"""How the predicted classes are drawn: rims (the protein stays visible) or fill with an opacity,
coloured by class or by confidence. The choices live in the layer presenter (``PredictionDisplay``)."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QFormLayout, QHBoxLayout, QLabel, QSlider, QWidget

from ._prediction_layers import CLASS, CONFIDENCE, FILL_OPACITY

RIMS, FILLED = "Rims (protein visible)", "Filled"


class DisplayOptions(QWidget):
    def __init__(self, state, parent=None):
        super().__init__(parent)
        self.state = state
        self.style_box = QComboBox()
        self.style_box.addItems([RIMS, FILLED])
        self.style_box.setToolTip("Rims: a coloured ring inside each cell, so the protein stays visible.\n"
                                  "Filled: the whole cell coloured, at the opacity below.")
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(int(FILL_OPACITY * 100))
        self.opacity.setToolTip("Opacity of the filled cells")
        self.opacity.setEnabled(False)
        self.colour_box = QComboBox()
        self.colour_box.addItem("Class", CLASS)
        self.colour_box.addItem("Confidence", CONFIDENCE)
        self.colour_box.setToolTip("Class: the predicted class's colour (legend above).\n"
                                   "Confidence: rose = unsure (below 0.5) … azure = sure (0.9 and above).")
        self.note = QLabel("White × : unfamiliar cell, far from every training cell: its class is a guess.")
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: gray;")

        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.style_box)
        row.addWidget(self.opacity)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Show", row)
        form.addRow("Colour by", self.colour_box)
        form.addRow(self.note)

        self.style_box.currentIndexChanged.connect(lambda _=None: self._changed())
        self.opacity.valueChanged.connect(lambda _=None: self._changed())
        self.colour_box.currentIndexChanged.connect(lambda _=None: self._changed())

    @property
    def fill(self) -> bool:
        return self.style_box.currentText() == FILLED

    def _changed(self) -> None:
        self.opacity.setEnabled(self.fill)
        presenter = getattr(self.state, "presenter", None)
        if presenter is not None:
            presenter.set_display(fill=self.fill, opacity=self.opacity.value() / 100,
                                  colour_by=self.colour_box.currentData())
