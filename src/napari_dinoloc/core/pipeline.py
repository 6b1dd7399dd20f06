"""``Session``: one image on its way through the steps, shared by the command line and the widgets.

Long steps (``segment``, ``compute_embeddings``, ``train_head``) return their result and change
nothing, so a widget can run them in a worker thread and apply the result on the main thread
with the ``set_*`` methods. Setting a step clears everything downstream of it, so stale
embeddings or predictions can never be shown for new cells.
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from .errors import DinolocError
from .progress import CancelToken, ProgressCallback


class Session:
    def __init__(self, cache=None):
        self.cache = cache
        self.image = None          # CellImage
        self.labels = None         # (Y, X) int32, 1..N
        self.table = None          # CellTable
        self.backbone = None       # LoadedBackbone
        self.embeddings = None     # Embeddings, rows in self.table order
        self.head = None           # Head
        self.predictions = None    # Predictions

    # ---- setters: call on the main thread; each clears what depends on it -------------
    def set_image(self, image) -> None:
        self.image = image
        self.labels = self.table = None
        self._clear_from_embeddings()

    def set_labels(self, labels: np.ndarray) -> None:
        from .segmentation import CellTable, prepare_labels

        self.require_image()
        self.labels = prepare_labels(labels, self.image.shape)
        self.table = CellTable.from_labels(self.labels)
        self._clear_from_embeddings()

    def set_backbone(self, backbone) -> None:
        if backbone is not self.backbone:
            self.backbone = backbone
            self._clear_from_embeddings()

    def set_embeddings(self, embeddings) -> None:
        self.embeddings = embeddings
        self.predictions = None
        if self.head is not None and self._head_fits(self.head):
            self.predictions = self.predict(self.head)

    def set_head(self, head) -> None:
        """Use ``head`` for predictions (computed at once: a head is fast)."""
        self.head = head
        self.predictions = self.predict(head) if head is not None else None

    def _clear_from_embeddings(self) -> None:
        self.embeddings = None
        self.predictions = None

    # ---- work: safe to run in a worker thread, changes nothing ---------------------------
    def segment(self, params=None, progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> np.ndarray:
        from .segmentation import SegmentationParams, segment_cells

        self.require_image()
        return segment_cells(self.image, params or SegmentationParams(), progress=progress, cancel=cancel)

    def find_cells(self, params=None, progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None):
        """The whole segmentation result (cells, nuclei, sizes used, notes such as dropped border cells)."""
        from .segmentation import SegmentationParams, segment

        self.require_image()
        return segment(self.image, params or SegmentationParams(), progress=progress, cancel=cancel)

    def get_backbone(self, name: str, weights=None, device: str = "auto"):
        """The loaded backbone for this choice, reusing the current one when it is the same."""
        from .classic import load_features as load_backbone

        current = self.backbone
        if current is not None and getattr(current, "_choice", None) == (name, str(weights or ""), device):
            return current
        backbone = load_backbone(name, weights=weights, device=device)
        backbone._choice = (name, str(weights or ""), device)
        return backbone

    def compute_embeddings(
        self,
        settings,
        backbone=None,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
    ):
        from .embedding import embed_cells

        self.require_cells()
        backbone = backbone or self.backbone
        if backbone is None:
            raise DinolocError("Choose a backbone before embedding cells.")
        return embed_cells(self.image, self.labels, backbone, settings, cache=self.cache, progress=progress, cancel=cancel,
                           table=self.table)

    def annotated_training_set(self, annotations: Mapping[int, str]) -> tuple[np.ndarray, list[str]]:
        """Embedding rows and classes of the annotated cells that exist in the current cells."""
        self.require_embeddings()
        row_of = {int(label): i for i, label in enumerate(self.embeddings.labels)}
        pairs = [(row_of[int(label)], name) for label, name in annotations.items() if name and int(label) in row_of]
        if not pairs:
            raise DinolocError("No annotated cells yet: click cells to give them a class, then train.")
        rows, classes = zip(*sorted(pairs))
        return self.embeddings.vectors[list(rows)], list(classes)

    def train_head(
        self,
        kind: str,
        annotations: Mapping[int, str],
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
        **params,
    ):
        from .heads import train_head

        vectors, classes = self.annotated_training_set(annotations)
        return train_head(kind, vectors, classes, progress=progress, cancel=cancel, **params)

    def predict(self, head):
        self.require_embeddings()
        if not self._head_fits(head):
            raise DinolocError(
                f"The classifier was trained on {_head_dim(head)}-dimensional embeddings, these have "
                f"{self.embeddings.vectors.shape[1]}: train it again on the current embeddings or use the backbone and strategy it was made with."
            )
        return head.predict(self.embeddings.vectors, self.embeddings.labels)

    def _head_fits(self, head) -> bool:
        dim = _head_dim(head)
        return dim is None or self.embeddings is None or dim == self.embeddings.vectors.shape[1]

    # ---- results --------------------------------------------------------------------------
    def model_info(self) -> dict[str, str]:
        signature = self.embeddings.signature if self.embeddings is not None else {}
        return {
            "backbone": str(signature.get("backbone", getattr(self.backbone, "name", ""))),
            "weights_hash": str(signature.get("weights_hash", getattr(self.backbone, "weights_hash", ""))),
            "strategy": str(signature.get("strategy", "")),
        }

    def rows(self, user_labels: Optional[Mapping[int, str]] = None) -> list[dict]:
        from .table import cell_rows

        self.require_cells()
        return cell_rows(self.image.name, self.table, self.predictions, user_labels, self.model_info())

    # ---- checks with messages that say what to do ------------------------------------------
    def require_image(self) -> None:
        if self.image is None:
            raise DinolocError("No image yet: open an image and say which channel is which stain.")

    def require_cells(self) -> None:
        self.require_image()
        if self.labels is None:
            raise DinolocError("No cells yet: segment the image or choose a label image first.")

    def require_embeddings(self) -> None:
        self.require_cells()
        if self.embeddings is None:
            raise DinolocError("No embeddings yet: embed the cells first.")


def _head_dim(head):
    """The embedding size a head was trained on (heads.Head calls it ``dim``)."""
    return getattr(head, "input_dim", getattr(head, "dim", None))
