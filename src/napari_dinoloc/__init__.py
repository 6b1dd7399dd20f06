"""napari-dinoloc: per-cell protein localization with self-supervised ViTs."""

__version__ = "0.1.0"
