"""Step 2: the backbone, how the channels enter it, and embedding every cell."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox, QFileDialog, QFormLayout, QLabel, QLineEdit, QPushButton, QSpinBox, QVBoxLayout,
    QWidget,
)

from ..core import defaults
from ..core.devices import DEVICE_CHOICES
from ..core.errors import DinolocError
from ._workers import notify_info, path_row, reports_errors

EMBEDDING_LABELS = {
    "cls": "CLS token",
    "cls+mean": "CLS + mean of patch tokens",
    "mean": "mean of patch tokens",
    "stain-means": "mean patch token of each stain (CA-MAE)",
}
WEIGHT_FILES = "Weights (*.pth *.pt *.ckpt *.safetensors *.bin);;All files (*)"


class ModelPanel(QWidget):
    def __init__(self, state, runner, parent=None):
        super().__init__(parent)
        self.state, self.runner = state, runner
        self._build()
        self._on_backbone_changed()
        self._describe_device()
        state.embeddings_changed.connect(self._show_current_settings)

    # ---- layout -------------------------------------------------------------------------------------
    def _build(self) -> None:
        from ..core.backbones import BACKBONES
        from ..core.embedding import EMBEDDING_TYPES
        from ..core.strategies import STRATEGIES

        self.backbone = _registry_combo(BACKBONES.values(), default=BACKBONES.default)
        _add_classic_choices(self.backbone, BACKBONES.names())
        self.backbone.setCurrentIndex(max(0, self.backbone.findData(defaults.FEATURES)))  # the measured best
        self.weights = QLineEdit()
        self.weights.setPlaceholderText("checkpoint file (.pth, .safetensors)")
        self.weights_row = path_row(self.weights, self._browse_weights, "Choose the weights file")
        self.strategy = _registry_combo(STRATEGIES.values(), default=STRATEGIES.default)
        self.embedding = QComboBox()
        for kind in EMBEDDING_TYPES:
            self.embedding.addItem(EMBEDDING_LABELS.get(kind, kind), kind)
        self.crop_size = _size_spin("Pixels of the image around each cell (0: the backbone's input size).", 2048, 1)
        self.input_size = _size_spin("Crops are resized to this (0: the backbone's input size); "
                                     "a multiple of the patch size.", 1024, 8)
        self.device = QComboBox()
        self.device.addItems(DEVICE_CHOICES)
        self.device_info = QLabel("…")
        self.device_info.setWordWrap(True)
        self.device_info.setStyleSheet("color: gray;")
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 1024)
        self.batch_size.setValue(32)
        self.batch_size.setToolTip("Cells per batch: lower it if memory runs out.")
        self.embed_button = QPushButton("Embed cells")
        self.embed_button.setToolTip("Run every cell through the backbone (in the background; Cancel stops it). "
                                     "A second run on the same image and settings is read from the cache.")

        form = QFormLayout()
        form.addRow("Backbone", self.backbone)
        form.addRow(_label("Weights"), self.weights_row)
        form.addRow("Channels", self.strategy)
        form.addRow("Embedding", self.embedding)
        form.addRow("Crop size", self.crop_size)
        form.addRow("Input size", self.input_size)
        form.addRow("Device", self.device)
        form.addRow("", self.device_info)
        form.addRow("Batch size", self.batch_size)
        self.form = form
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(self.embed_button)

        self.backbone.currentIndexChanged.connect(lambda _=None: self._on_backbone_changed())
        self.device.currentIndexChanged.connect(lambda _=None: self._describe_device())
        self.embed_button.clicked.connect(lambda _=False: self.embed())

    def _on_backbone_changed(self) -> None:
        spec = self.spec()
        needs_file = spec.source == "file"
        _set_row_visible(self.form, self.weights_row, spec.source != "random")
        self.weights.setPlaceholderText("checkpoint file (required)" if needs_file
                                        else "optional: a local copy of the weights")
        self.input_size.setSingleStep(spec.patch_size)
        self.input_size.setSpecialValueText(f"auto ({spec.input_size} px)")
        self.crop_size.setSpecialValueText("auto (2 cell diameters)")

    def _show_current_settings(self) -> None:
        """The controls follow the current embeddings, also when a saved model made them."""
        embeddings = self.state.session.embeddings
        if embeddings is None:
            return
        signature = embeddings.signature
        for box, key in ((self.backbone, "backbone"), (self.strategy, "strategy"), (self.embedding, "embedding")):
            index = box.findData(signature.get(key))
            if index >= 0:
                box.setCurrentIndex(index)
        self.crop_size.setValue(int(signature.get("crop_size") or 0) if signature.get("crop_mode", "fixed") == "fixed" else 0)
        self.input_size.setValue(int(signature.get("input_size") or 0))

    def _browse_weights(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Backbone weights", "", WEIGHT_FILES)
        if path:
            self.weights.setText(path)

    def _describe_device(self) -> None:
        """What 'auto' finds, looked up off the main thread (it imports torch)."""
        from ..core.devices import describe_device

        name = self.device.currentText()
        self.device_info.setText(f"{name}: looking…")
        label = self.device_info

        def show(text):
            try:
                label.setText(text)
            except RuntimeError:  # the dock was closed meanwhile
                pass

        self.runner.run_in_background(_safe_describe, describe_device, name, on_done=show)  # closing waits for it

    # ---- choices --------------------------------------------------------------------------------------
    def spec(self):
        """The chosen backbone's spec; for ``classic`` alone, the classic features' own (no weights)."""
        from ..core.backbones import BACKBONES
        from ..core.classic.backbone import CLASSIC, SUFFIX

        name = self.backbone.currentData()
        if name == CLASSIC:
            return _ClassicSpec()
        return BACKBONES[name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name]

    def settings(self):
        from ..core.embedding import EmbedSettings

        return EmbedSettings(
            strategy=self.strategy.currentData(),
            embedding=self.embedding.currentData(),
            crop_size=self.crop_size.value() or None,
            input_size=self.input_size.value() or None,
            batch_size=self.batch_size.value(),
            device=self.device.currentText(),
        )

    def weights_path(self):
        text = self.weights.text().strip()
        if self.spec().source == "random":
            return None
        if not text and self.spec().source == "file":
            raise DinolocError(f"The backbone {self.spec().name} needs its weights file: choose it under Weights "
                               "(a DINO checkpoint .pth or a .safetensors file).")
        return text or None

    def model_choice(self) -> dict:
        """The weights file, device and settings, for steps that embed with another backbone (bundles)."""
        return {"weights": self.weights.text().strip() or None, "device": self.device.currentText(),
                "settings": self.settings()}

    def choose(self, backbone: str, input_size: int = 0, crop_size: int = 0, strategy: str = "") -> None:
        """Set the controls (tests, screenshots, a loaded model bundle)."""
        self.backbone.setCurrentIndex(self.backbone.findData(backbone))
        self.input_size.setValue(input_size)
        self.crop_size.setValue(crop_size)
        if strategy:
            self.strategy.setCurrentIndex(self.strategy.findData(strategy))

    # ---- work -------------------------------------------------------------------------------------------
    @reports_errors("Embedding cells")
    def embed(self) -> bool:
        session = self.state.session
        session.require_cells()
        name, weights, settings = self.backbone.currentData(), self.weights_path(), self.settings()
        labels = session.labels

        def work(progress, cancel):
            backbone = session.get_backbone(name, weights, settings.device)
            return backbone, session.compute_embeddings(settings, backbone, progress=progress, cancel=cancel)

        return self.runner.run("Embedding cells", work, lambda result: self._embedded(labels, *result))

    def _embedded(self, labels, backbone, embeddings) -> None:
        if self.state.session.labels is not labels:
            notify_info("The cells changed while embedding: embed them again.")
            return
        self.state.use_embeddings(backbone, embeddings)
        signature = embeddings.signature
        notify_info(f"Embedded {len(embeddings.labels)} cells: {embeddings.vectors.shape[1]} numbers each "
                    f"({signature.get('backbone')}, {signature.get('strategy')}, {signature.get('precision_used', 'fp32')}).")


def _safe_describe(describe, name: str) -> str:
    try:
        return describe(name)
    except DinolocError as error:
        return str(error)


class _ClassicSpec:
    """What the panel reads from a spec, for the classic features (no weights, any input size)."""

    name, source, patch_size, input_size = "classic", "random", 1, 64


def _add_classic_choices(box: QComboBox, names) -> None:
    """``classic`` and every backbone ``+classic``, after the backbones."""
    tip = ("Classical per-cell features (intensity, radial distribution, texture, granularity, shape), "
           "standardised with the training cells' statistics: the baseline deep features must beat.")
    for name in ["classic", *(n + "+classic" for n in names)]:
        box.addItem(name, name)
        box.setItemData(box.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)


def _registry_combo(entries, default: str) -> QComboBox:
    """A combo of registry entries (name + tooltip with description and paper)."""
    box = QComboBox()
    for entry in entries:
        box.addItem(entry.name, entry.name)
        tip = entry.description + (f"\n\nPaper: {entry.paper}" if getattr(entry, "paper", "") else "")
        box.setItemData(box.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
    index = box.findData(default)
    box.setCurrentIndex(max(index, 0))
    box.currentIndexChanged.connect(lambda i: box.setToolTip(box.itemData(i, Qt.ItemDataRole.ToolTipRole)))
    box.setToolTip(box.itemData(box.currentIndex(), Qt.ItemDataRole.ToolTipRole))
    return box


def _size_spin(tip: str, maximum: int, step: int) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(0, maximum)
    spin.setSingleStep(step)
    spin.setSuffix(" px")
    spin.setToolTip(tip)
    return spin


def _label(text: str) -> QLabel:
    return QLabel(text)


def _set_row_visible(form: QFormLayout, field: QWidget, visible: bool) -> None:
    """QFormLayout.setRowVisible needs Qt 6.4; this works with every binding."""
    field.setVisible(visible)
    label = form.labelForField(field)
    if label is not None:
        label.setVisible(visible)
