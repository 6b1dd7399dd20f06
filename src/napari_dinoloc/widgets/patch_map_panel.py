"""Step 8: patch feature maps. The engine (core.patch_maps) computes them; this panel only shows them
as layers laid over the image and turns a click into a "similar patches" map."""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QCheckBox, QLabel, QPushButton, QVBoxLayout, QWidget

from ._canvas import remove_layer_safely
from ._workers import notify_info, reports_errors

PCA_LAYER = "patch colours (PCA)"
SIMILAR_LAYER = "similar patches"


class PatchMapPanel(QWidget):
    def __init__(self, state, runner, model_panel, parent=None):
        super().__init__(parent)
        self.state, self.runner, self.model_panel = state, runner, model_panel
        self.patches = None  # core.patch_maps.PatchTokens of the last map
        self.pca_button = QPushButton("Patch colours of the visible cells")
        self.pca_button.setToolTip("The patch tokens of the part of the image in view, their first three principal "
                                   "components (fitted on the cells' patches) as red, green and blue.")
        self.pca_button.clicked.connect(self.show_pca)
        self.click_similar = QCheckBox("Click a patch: show similar patches")
        self.click_similar.setToolTip("Cosine similarity of every patch of the map to the clicked one, as a heat map.")
        self.click_similar.toggled.connect(self._listen_to_clicks)
        hint = QLabel("Uses the backbone and channel strategy of step 2 (for the classic features: dinoloc-cells).")
        hint.setStyleSheet("color: gray;")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for widget in (self.pca_button, self.click_similar, hint):
            layout.addWidget(widget)
        state.image_changed.connect(self._forget)

    # ---- work -------------------------------------------------------------------------------------------
    @reports_errors("Patch colours")
    def show_pca(self, region=None) -> bool:
        from ..core.patch_maps import patch_tokens, pca_colours

        session = self.state.session
        session.require_cells()
        panel = self.model_panel
        from ..core.classic.backbone import transformer_for

        # the classic features have no patches: their vision transformer (or the default one) makes the map
        name, weights, settings = transformer_for(panel.spec().name), panel.weights_path(), panel.settings()
        image, labels = session.image, session.labels
        region = region if region is not None else self.visible_region()

        def work(progress, cancel):
            backbone = session.get_backbone(name, weights, settings.device)
            # cells at the scale the embeddings see them: the crop size resized to the input size
            scale = (settings.input_size or backbone.spec.input_size) / settings.crop_size if settings.crop_size else None
            patches = patch_tokens(image, backbone, labels, region, settings.strategy, scale=scale)
            return patches, pca_colours(patches)

        return self.runner.run("Patch colours", work, lambda result: self._show_pca(*result))

    def show_similar(self, point) -> None:
        """The similar-patches map for ``point`` ((y, x) in image pixels)."""
        from ..core.patch_maps import similarity_map

        if self.patches is None:
            notify_info("Make the patch colours first (the similar-patches map uses their patch tokens).")
            return
        similarity = similarity_map(self.patches, point)
        self._show(SIMILAR_LAYER, np.nan_to_num(similarity, nan=-1.0), colormap="inferno", contrast_limits=(0, 1),
                   opacity=0.8)

    # ---- layers -----------------------------------------------------------------------------------------
    def _show_pca(self, patches, colours) -> None:
        self.patches = patches
        self._remove(SIMILAR_LAYER)
        self._show(PCA_LAYER, colours, rgb=True, opacity=0.8)

    def _show(self, name, data, **kwargs) -> None:
        from ..core.patch_maps import layer_placement

        viewer = self.viewer
        if viewer is None:
            return
        (sy, sx), (ty, tx) = layer_placement(self.patches)
        like = self._image_layer()
        base_scale = np.asarray(like.scale[-2:]) if like is not None else np.ones(2)
        base_shift = np.asarray(like.translate[-2:]) if like is not None else np.zeros(2)
        scale, translate = base_scale * (sy, sx), base_shift + base_scale * (ty, tx)
        layer = viewer.layers[name] if name in viewer.layers else None
        if layer is not None:
            layer.data, layer.scale, layer.translate = data, scale, translate
            return
        viewer.add_image(data, name=name, scale=scale, translate=translate, blending="translucent", **kwargs)

    @property
    def viewer(self):
        return self.state.viewer

    def _image_layer(self):
        viewer = self.viewer
        for layer in viewer.layers if viewer is not None else ():
            if layer.name in self.state.image_layer_names:
                return layer
        return None

    def visible_region(self):
        """(y0, x0, y1, x1) of the image in view, in image pixels; None (all of it) without a view."""
        like = self._image_layer()
        if like is None:
            return None
        (y0, x0), (y1, x1) = np.asarray(like.corner_pixels)[:, -2:]  # napari keeps the view's corners, in pixels
        if y1 <= y0 or x1 <= x0:
            return None
        return int(y0), int(x0), int(y1) + 1, int(x1) + 1

    def _listen_to_clicks(self, on: bool) -> None:
        viewer = self.viewer
        if viewer is None:
            return
        callbacks = viewer.mouse_drag_callbacks
        if on and self._on_click not in callbacks:
            callbacks.append(self._on_click)
        elif not on and self._on_click in callbacks:
            callbacks.remove(self._on_click)

    def _on_click(self, viewer, event) -> None:
        like = self._image_layer()
        if like is None or self.patches is None:
            return
        y, x = like.world_to_data(event.position)[-2:]
        y0, x0, y1, x1 = self.patches.region
        if y0 <= y < y1 and x0 <= x < x1:
            self.show_similar((y, x))

    def _forget(self) -> None:
        self.patches = None
        for name in (PCA_LAYER, SIMILAR_LAYER):
            self._remove(name)

    def _remove(self, name: str) -> None:
        viewer = self.viewer
        if viewer is not None and name in viewer.layers:
            remove_layer_safely(viewer, name)
