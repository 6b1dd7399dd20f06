"""The engine of napari-dinoloc. It imports no Qt and no napari.

Data flows one way: image -> cells -> crops -> embeddings -> predictions -> table.
torch, timm and umap are imported lazily inside the functions that need them, so that
importing the engine (and napari's plugin discovery) stays fast.
"""
